#include <pthread.h>
#include "CFerryTLS.h"
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

void ferry_tls_last_error(char *err, size_t errlen) {
    if (!err || errlen == 0) return;
    err[0] = 0;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) ERR_error_string_n(e, err, errlen);
}

SSL_CTX *ferry_tls_server_ctx(int min13) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, min13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    // IGNORE_UNEXPECTED_EOF: a client that closes without close_notify (browsers do) is a client
    // closing, not a TLS error (OpenSSL 3 reports it as one otherwise).
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE
                                 | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    static const unsigned char sid[] = "ferry";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    return ctx;
}

int ferry_tls_use_pem(SSL_CTX *ctx, const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                      char *err, size_t errlen) {
    ERR_clear_error();
    int ok = 0;
    BIO *cb = BIO_new_mem_buf(cert_pem, (int)cert_len);
    BIO *kb = BIO_new_mem_buf(key_pem, (int)key_len);
    X509 *leaf = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    if (!leaf) { snprintf(err, errlen, "no certificate in PEM"); goto done; }
    if (!key) { snprintf(err, errlen, "no private key in PEM"); goto done; }
    if (SSL_CTX_use_certificate(ctx, leaf) != 1) goto fail;
    SSL_CTX_clear_chain_certs(ctx);
    X509 *extra;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) { X509_free(extra); goto fail; }
    }
    ERR_clear_error();  // the loop ends on a "no start line" error
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1) goto fail;
    if (SSL_CTX_check_private_key(ctx) != 1) { snprintf(err, errlen, "private key does not match the certificate"); goto done; }
    ok = 1;
    goto done;
fail:
    ferry_tls_last_error(err, errlen);
done:
    X509_free(leaf);
    EVP_PKEY_free(key);
    BIO_free(cb);
    BIO_free(kb);
    return ok;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
    (void)ssl;
    const unsigned char *server = arg;
    unsigned int slen = server[0] | (server[1] << 8);
    const unsigned char *protos = server + 2;
    // Server preference: the first of ours the client also offers.
    for (unsigned int i = 0; i < slen;) {
        unsigned int l = protos[i];
        for (unsigned int j = 0; j < inlen;) {
            unsigned int cl = in[j];
            if (cl == l && memcmp(in + j + 1, protos + i + 1, l) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)cl;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + cl;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

// The ALPN list a context offers lives exactly as long as the context: it hangs off the
// context's ex_data, whose free callback releases it when the last reference goes. (It used to
// be kept forever, and every SIGHUP builds new contexts: found by the ASan run of the tests.)
static int alpn_index = -1;
static pthread_once_t alpn_once = PTHREAD_ONCE_INIT;

static void alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    free(ptr);
}

static void alpn_index_init(void) { alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, alpn_free); }

void ferry_tls_set_alpn(SSL_CTX *ctx, const unsigned char *protos, unsigned int len) {
    pthread_once(&alpn_once, alpn_index_init);
    unsigned char *copy = malloc(len + 2);
    if (!copy || alpn_index < 0 || SSL_CTX_set_ex_data(ctx, alpn_index, copy) != 1) {
        free(copy);
        return;
    }
    copy[0] = len & 0xff;
    copy[1] = (len >> 8) & 0xff;
    memcpy(copy + 2, protos, len);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, copy);
}

struct ferry_sni_table {
    int count, capacity;
    char **names;
    SSL_CTX **ctxs;
};

ferry_sni_table *ferry_sni_table_new(int capacity) {
    ferry_sni_table *t = calloc(1, sizeof *t);
    t->capacity = capacity > 0 ? capacity : 1;
    t->names = calloc(t->capacity, sizeof(char *));
    t->ctxs = calloc(t->capacity, sizeof(SSL_CTX *));
    return t;
}

void ferry_sni_table_add(ferry_sni_table *t, const char *name, SSL_CTX *ctx) {
    if (t->count == t->capacity) return;
    t->names[t->count] = strdup(name);
    for (char *p = t->names[t->count]; *p; p++) *p = (char)tolower((unsigned char)*p);
    SSL_CTX_up_ref(ctx);
    t->ctxs[t->count] = ctx;
    t->count++;
}

void ferry_sni_table_free(ferry_sni_table *t) {
    if (!t) return;
    for (int i = 0; i < t->count; i++) {
        free(t->names[i]);
        SSL_CTX_free(t->ctxs[i]);
    }
    free(t->names);
    free(t->ctxs);
    free(t);
}

static int name_matches(const char *pattern, const char *host) {
    if (strcasecmp(pattern, host) == 0) return 1;
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(host, '.');
        return dot && strcasecmp(pattern + 1, dot) == 0;
    }
    return 0;
}

static int sni_callback(SSL *ssl, int *alert, void *arg) {
    (void)alert;
    ferry_sni_table *t = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!host || !t) return SSL_TLSEXT_ERR_NOACK;
    for (int i = 0; i < t->count; i++) {
        if (name_matches(t->names[i], host)) {
            SSL_set_SSL_CTX(ssl, t->ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

void ferry_tls_set_sni(SSL_CTX *default_ctx, ferry_sni_table *t) {
    SSL_CTX_set_tlsext_servername_callback(default_ctx, sni_callback);
    SSL_CTX_set_tlsext_servername_arg(default_ctx, t);
}

static X509 *read_cert(const char *pem, size_t len) {
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return x;
}

static int x509_names(X509 *x, char *out, size_t outlen) {
    int n = 0;
    size_t used = 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    if (sans) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
            GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
            if (g->type != GEN_DNS) continue;
            const char *s = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
            size_t l = (size_t)ASN1_STRING_length(g->d.dNSName);
            if (used + l + 1 > outlen) break;
            memcpy(out + used, s, l);
            out[used + l] = 0;
            used += l + 1;
            n++;
        }
        GENERAL_NAMES_free(sans);
    }
    if (n == 0) {
        int l = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)outlen);
        if (l > 0) n = 1;
    }
    return n;
}

int ferry_tls_cert_names(const char *cert_pem, size_t cert_len, char *out, size_t outlen) {
    X509 *x = read_cert(cert_pem, cert_len);
    if (!x) return 0;
    int n = x509_names(x, out, outlen);
    X509_free(x);
    return n;
}

static int64_t x509_not_after(X509 *x) {
    struct tm tm;
    return ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 ? (int64_t)timegm(&tm) : -1;
}

int64_t ferry_tls_cert_not_after(const char *cert_pem, size_t cert_len) {
    X509 *x = read_cert(cert_pem, cert_len);
    if (!x) return -1;
    int64_t t = x509_not_after(x);
    X509_free(x);
    return t;
}

static char *bio_string(BIO *b) {
    char *data = NULL;
    long len = BIO_get_mem_data(b, &data);
    char *out = malloc((size_t)len + 1);
    memcpy(out, data, (size_t)len);
    out[len] = 0;
    return out;
}

int ferry_tls_self_signed(const char *name, int days, char **cert_pem, char **key_pem) {
    int ok = 0;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    if (!kctx || EVP_PKEY_keygen_init(kctx) != 1 || EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1) != 1 ||
        EVP_PKEY_keygen(kctx, &key) != 1) goto done;
    x = X509_new();
    X509_set_version(x, 2);
    unsigned char serial[8];
    RAND_bytes(serial, sizeof serial);
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *subject = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, subject);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    char san[512];
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1,IP:::1", name);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (!ext) goto done;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (X509_sign(x, key, EVP_sha256()) == 0) goto done;
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
    if (PEM_write_bio_X509(cb, x) == 1 && PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) == 1) {
        *cert_pem = bio_string(cb);
        *key_pem = bio_string(kb);
        ok = 1;
    }
    BIO_free(cb);
    BIO_free(kb);
done:
    EVP_PKEY_CTX_free(kctx);
    EVP_PKEY_free(key);
    X509_free(x);
    return ok;
}

int ferry_tls_selected_alpn(const SSL *ssl, char *out, size_t outlen) {
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    if (!p || len == 0 || len + 1 > outlen) return 0;
    memcpy(out, p, len);
    out[len] = 0;
    return (int)len;
}

const char *ferry_tls_version(const SSL *ssl) { return SSL_get_version(ssl); }

// ---- Output queue and the BIO that writes into it ----

int ferry_outbuf_append(ferry_outbuf *b, const void *p, size_t n) {
    if (n == 0) return 1;
    if (b->end + n > b->cap && b->start > 0) {
        // Slide the unsent bytes to the front before growing.
        memmove(b->data, b->data + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
    }
    if (b->end + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->end + n) cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d) return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->end, p, n);
    b->end += n;
    return 1;
}

void ferry_outbuf_consume(ferry_outbuf *b, size_t n) {
    b->start += n;
    if (b->start >= b->end) ferry_outbuf_free(b);
}

void ferry_outbuf_free(ferry_outbuf *b) {
    free(b->data);
    b->data = NULL;
    b->start = b->end = b->cap = 0;
}

static int outbuf_bio_write(BIO *bio, const char *data, int len) {
    BIO_clear_retry_flags(bio);
    if (len <= 0) return 0;
    return ferry_outbuf_append(BIO_get_data(bio), data, (size_t)len) ? len : -1;
}

static long outbuf_bio_ctrl(BIO *bio, int cmd, long num, void *ptr) {
    (void)bio; (void)num; (void)ptr;
    // A flush is the caller's write(2); nothing is ever pending inside the BIO itself.
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int outbuf_bio_create(BIO *bio) {
    BIO_set_init(bio, 1);
    return 1;
}

static BIO_METHOD *outbuf_method;
static CRYPTO_ONCE outbuf_once = CRYPTO_ONCE_STATIC_INIT;

static void outbuf_method_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ferry output queue");
    if (!m) return;
    BIO_meth_set_write(m, outbuf_bio_write);
    BIO_meth_set_ctrl(m, outbuf_bio_ctrl);
    BIO_meth_set_create(m, outbuf_bio_create);
    outbuf_method = m;
}

int ferry_tls_set_io(SSL *ssl, int fd, ferry_outbuf *out) {
    if (!CRYPTO_THREAD_run_once(&outbuf_once, outbuf_method_init) || !outbuf_method) return 0;
    BIO *rbio = BIO_new_socket(fd, BIO_NOCLOSE);
    BIO *wbio = BIO_new(outbuf_method);
    if (!rbio || !wbio) {
        BIO_free(rbio);
        BIO_free(wbio);
        return 0;
    }
    BIO_set_data(wbio, out);
    SSL_set_bio(ssl, rbio, wbio);
    return 1;
}

// ---- Keys and signatures ----
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/ecdsa.h>

int ferry_x25519_keypair(unsigned char priv[32], unsigned char pub[32]) {
    if (RAND_bytes(priv, 32) != 1) return 0;
    return ferry_x25519_public(priv, pub);
}

int ferry_x25519_public(const unsigned char priv[32], unsigned char pub[32]) {
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
    if (!k) return 0;
    size_t len = 32;
    int ok = EVP_PKEY_get_raw_public_key(k, pub, &len) == 1 && len == 32;
    EVP_PKEY_free(k);
    return ok;
}

int ferry_x25519_shared(const unsigned char priv[32], const unsigned char peer_pub[32], unsigned char out[32]) {
    int ok = 0;
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
    EVP_PKEY *p = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, 32);
    EVP_PKEY_CTX *ctx = k ? EVP_PKEY_CTX_new(k, NULL) : NULL;
    size_t len = 32;
    if (ctx && p && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, p) == 1 &&
        EVP_PKEY_derive(ctx, out, &len) == 1 && len == 32) {
        // An all-zero result means a low-order public key: refuse it (RFC 7748 §6.1).
        unsigned char acc = 0;
        for (int i = 0; i < 32; i++) acc |= out[i];
        ok = acc != 0;
    }
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(k);
    EVP_PKEY_free(p);
    return ok;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *b) {
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1) EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    return key;
}

EVP_PKEY *ferry_pkey_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen) {
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    EVP_PKEY *k = NULL;
    if (bn && be && b && OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn) == 1 &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be) == 1) {
        k = from_params("RSA", b);
        b = NULL;
    }
    OSSL_PARAM_BLD_free(b);
    BN_free(bn);
    BN_free(be);
    return k;
}

EVP_PKEY *ferry_pkey_ec_p256(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen) {
    if (xlen != 32 || ylen != 32) return NULL;
    unsigned char point[65];
    point[0] = 0x04;
    memcpy(point + 1, x, 32);
    memcpy(point + 33, y, 32);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    if (!b) return NULL;
    OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point);
    return from_params("EC", b);
}

EVP_PKEY *ferry_pkey_ed25519(const unsigned char *x, size_t xlen) {
    if (xlen != 32) return NULL;
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
}

void ferry_pkey_free(EVP_PKEY *k) { EVP_PKEY_free(k); }

int ferry_jws_verify(EVP_PKEY *key, int alg, const unsigned char *data, size_t len, const unsigned char *sig, size_t siglen) {
    int ok = 0;
    unsigned char *der = NULL;
    size_t derlen = 0;
    const unsigned char *s = sig;
    size_t slen = siglen;
    if (alg == 2) {
        // JOSE ECDSA signatures are r||s; OpenSSL wants DER.
        if (siglen != 64) return 0;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *ss = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !ss || ECDSA_SIG_set0(es, r, ss) != 1) { ECDSA_SIG_free(es); BN_free(r); BN_free(ss); return 0; }
        int l = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
        if (l <= 0) return 0;
        derlen = (size_t)l;
        s = der;
        slen = derlen;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    const EVP_MD *digest = alg == 3 ? NULL : EVP_sha256();
    if (md && EVP_DigestVerifyInit(md, NULL, digest, NULL, key) == 1 && EVP_DigestVerify(md, s, slen, data, len) == 1) ok = 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

#include <sys/socket.h>
#include <sys/time.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <errno.h>
#include <unistd.h>
#include <time.h>

static int64_t monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// Waits until fd is ready for `events` or the deadline passes; 1 ready, 0 timed out, -1 error.
static int wait_fd(int fd, short events, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - monotonic_ms();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
        if (rc > 0) return 1;
        if (rc < 0 && errno != EINTR) return -1;
    }
}

// Connects to the first address of host:port that answers before the deadline.
static int connect_deadline(const char *host, const char *port, int64_t deadline, char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) { snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc)); return -1; }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        int soerr = errno;
        if (soerr == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 1) {
            socklen_t l = sizeof soerr;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l) == 0 && soerr == 0) break;
        }
        snprintf(err, errlen, "connect to %s:%s: %s", host, port, soerr == EINPROGRESS ? "timed out" : strerror(soerr));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

// Drives one SSL call on a non-blocking socket until it completes or the deadline passes.
#define SSL_WITH_DEADLINE(call, what)                                                                   \
    for (;;) {                                                                                          \
        ERR_clear_error();                                                                              \
        int rc_ = (call);                                                                               \
        if (rc_ > 0) break;                                                                             \
        int e_ = SSL_get_error(ssl, rc_);                                                               \
        short ev_ = e_ == SSL_ERROR_WANT_READ ? POLLIN : e_ == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;      \
        if (!ev_) { ferry_tls_last_error(err, errlen); if (!err[0]) snprintf(err, errlen, "%s failed", what); goto done; } \
        if (wait_fd(fd, ev_, deadline) != 1) { snprintf(err, errlen, "%s: timed out", what); goto done; } \
    }

int ferry_https_get(const char *host, const char *port, const char *path, const char *ca_file, int timeout_seconds,
                    size_t max_body, char **body, size_t *body_len, char *err, size_t errlen) {
    int status = -1;
    int64_t deadline = monotonic_ms() + (int64_t)timeout_seconds * 1000;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = -1;
    char *buf = NULL;
    if (!ctx) { snprintf(err, errlen, "SSL_CTX_new failed"); return -1; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((ca_file && ca_file[0] ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        snprintf(err, errlen, "cannot load CA certificates");
        goto done;
    }
    fd = connect_deadline(host, port, deadline, err, errlen);
    if (fd < 0) goto done;
    ssl = SSL_new(ctx);
    if (!ssl) { snprintf(err, errlen, "SSL_new failed"); goto done; }
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set1_host(ssl, host);
    SSL_WITH_DEADLINE(SSL_connect(ssl), "TLS handshake");
    char req[1024];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nAccept: application/json\r\nUser-Agent: ferryd\r\nConnection: close\r\n\r\n", path, host);
    SSL_WITH_DEADLINE(SSL_write(ssl, req, rl), "sending the request");
    size_t cap = 65536, len = 0;
    buf = malloc(cap);
    if (!buf) { snprintf(err, errlen, "out of memory"); goto done; }
    for (;;) {
        if (len + 4096 > cap) {
            if (cap >= max_body + 16384) { snprintf(err, errlen, "response too large"); goto done; }
            char *grown = realloc(buf, cap * 2);
            if (!grown) { snprintf(err, errlen, "out of memory"); goto done; }
            buf = grown;
            cap *= 2;
        }
        ERR_clear_error();
        int n = SSL_read(ssl, buf + len, 4096);
        if (n > 0) { len += (size_t)n; continue; }
        int e = SSL_get_error(ssl, n);
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) break;  // end of response
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (!ev) {
            // OpenSSL 3 reports an EOF without close_notify as an error; HTTP/1.0 ends there.
            if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) break;
            ferry_tls_last_error(err, errlen);
            goto done;
        }
        if (wait_fd(fd, ev, deadline) != 1) { snprintf(err, errlen, "reading the response: timed out"); goto done; }
    }
    buf[len < cap ? len : cap - 1] = 0;
    char *sep = NULL;
    for (size_t i = 0; i + 3 < len; i++) {
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') { sep = buf + i; break; }
    }
    int code = 0;
    if (!sep || sscanf(buf, "HTTP/%*d.%*d %d", &code) != 1) { snprintf(err, errlen, "not an HTTP response"); goto done; }
    size_t start = (size_t)(sep - buf) + 4;
    *body_len = len - start;
    *body = malloc(*body_len + 1);
    memcpy(*body, buf + start, *body_len);
    (*body)[*body_len] = 0;
    status = code;
done:
    free(buf);
    SSL_free(ssl);
    if (fd >= 0) close(fd);
    SSL_CTX_free(ctx);
    return status;
}

// ---- TLS client ----
struct ferry_tls_client {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
};

void ferry_tls_client_free(ferry_tls_client *c) {
    if (!c) return;
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    free(c);
}

ferry_tls_client *ferry_tls_client_connect(int fd, const char *host, const char *ca_file, const unsigned char *alpn,
                                           unsigned int alpn_len, int timeout_ms, char *err, size_t errlen) {
    int64_t deadline = monotonic_ms() + timeout_ms;
    err[0] = 0;
    ferry_tls_client *c = calloc(1, sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return NULL; }
    c->fd = fd;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) { snprintf(err, errlen, "SSL_CTX_new failed"); goto fail; }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    // Verification is recorded, not enforced here: see the header.
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    if ((ca_file && ca_file[0] ? SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(c->ctx)) != 1) {
        snprintf(err, errlen, "cannot load CA certificates%s%s", ca_file && ca_file[0] ? " from " : "", ca_file ? ca_file : "");
        goto fail;
    }
    SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl) { snprintf(err, errlen, "SSL_new failed"); goto fail; }
    SSL_set_fd(c->ssl, fd);
    if (host && host[0]) {
        // SNI only for names (RFC 6066 §3: not for literal addresses); the host check for both.
        struct in6_addr a6; struct in_addr a4;
        int literal = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
        if (!literal) SSL_set_tlsext_host_name(c->ssl, host);
        if (literal) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
        else SSL_set1_host(c->ssl, host);
    }
    if (alpn && alpn_len) SSL_set_alpn_protos(c->ssl, alpn, alpn_len);
    SSL *ssl = c->ssl;
    SSL_WITH_DEADLINE(SSL_connect(ssl), "TLS handshake");
    return c;
done:
fail:
    ferry_tls_client_free(c);
    return NULL;
}

long ferry_tls_client_verify(ferry_tls_client *c, char *out, size_t outlen) {
    long r = SSL_get_verify_result(c->ssl);
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (!peer) { snprintf(out, outlen, "the server sent no certificate"); return X509_V_ERR_UNSPECIFIED; }
    X509_free(peer);
    snprintf(out, outlen, "%s", X509_verify_cert_error_string(r));
    return r;
}

int ferry_tls_client_names(ferry_tls_client *c, char *out, size_t outlen) {
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (!peer) return 0;
    int n = x509_names(peer, out, outlen);
    X509_free(peer);
    return n;
}

int64_t ferry_tls_client_not_after(ferry_tls_client *c) {
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (!peer) return -1;
    int64_t t = x509_not_after(peer);
    X509_free(peer);
    return t;
}

int ferry_tls_client_chain(ferry_tls_client *c, char *out, size_t outlen) {
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(c->ssl);
    int n = 0;
    size_t used = 0;
    for (int i = 0; chain && i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        char subject[256] = "?", issuer[256] = "?";
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, subject, sizeof subject);
        X509_NAME_get_text_by_NID(X509_get_issuer_name(x), NID_commonName, issuer, sizeof issuer);
        int l = snprintf(out + used, outlen - used, "%s <- %s", subject, issuer);
        if (l < 0 || used + (size_t)l + 1 > outlen) break;
        used += (size_t)l + 1;
        n++;
    }
    return n;
}

const char *ferry_tls_client_version(ferry_tls_client *c) { return SSL_get_version(c->ssl); }

int ferry_tls_client_write(ferry_tls_client *c, const void *buf, size_t len, int timeout_ms, char *err, size_t errlen) {
    int64_t deadline = monotonic_ms() + timeout_ms;
    SSL *ssl = c->ssl;
    int fd = c->fd;
    size_t done_bytes = 0;
    err[0] = 0;
    while (done_bytes < len) {
        size_t wrote = 0;
        SSL_WITH_DEADLINE(SSL_write_ex(ssl, (const char *)buf + done_bytes, len - done_bytes, &wrote), "TLS write");
        done_bytes += wrote;
    }
    return 1;
done:
    return 0;
}

long ferry_tls_client_read(ferry_tls_client *c, void *buf, size_t len, int timeout_ms, char *err, size_t errlen) {
    int64_t deadline = monotonic_ms() + timeout_ms;
    err[0] = 0;
    for (;;) {
        ERR_clear_error();
        size_t got = 0;
        if (SSL_read_ex(c->ssl, buf, len, &got) == 1) return (long)got;
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) return 0;
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return 0;
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (!ev) { ferry_tls_last_error(err, errlen); return -1; }
        int w = wait_fd(c->fd, ev, deadline);
        if (w == 0) return -2;
        if (w < 0) { snprintf(err, errlen, "poll: %s", strerror(errno)); return -1; }
    }
}
