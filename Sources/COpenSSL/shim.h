// OpenSSL for Swift: the headers, plus static-inline wrappers for the function-like macros
// and 64-bit constants that do not import (see ../shared/NOTES.md).
#ifndef C_FERRY_OPENSSL_H
#define C_FERRY_OPENSSL_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/pem.h>

static inline long ferry_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long ferry_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long ferry_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline int ferry_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
#endif
