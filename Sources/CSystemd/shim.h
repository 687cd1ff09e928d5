// libsystemd: socket activation and readiness. sd_notifyf is variadic and does not import;
// Swift formats the state string and calls sd_notify.
#ifndef C_FERRY_SYSTEMD_H
#define C_FERRY_SYSTEMD_H
#include <systemd/sd-daemon.h>
static const int ferry_sd_listen_fds_start = SD_LISTEN_FDS_START;
#endif
