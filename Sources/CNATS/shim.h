// cnats (Debian's libnats-dev): the NATS client behind signaling across instances
// (FerryServer/NATS). Only the public header; every call is made from Swift.
#ifndef C_FERRY_NATS_H
#define C_FERRY_NATS_H
#include <nats/nats.h>
#endif
