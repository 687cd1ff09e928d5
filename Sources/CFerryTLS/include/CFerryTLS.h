// Thin C glue for OpenSSL that Swift cannot express directly: macros (SSL_CTX_set_mode,
// SSL_CTX_set_min_proto_version, the SNI callback setter, BIO_get_mem_data), callbacks that need
// C function pointers with a context (ALPN selection, SNI), and building a self-signed
// certificate for the development default. Policy (which names, which protocols, when to
// reload) stays in Swift.
#ifndef C_FERRY_TLS_H
#define C_FERRY_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

// A server context: TLS 1.2 minimum (or 1.3 when min13), no compression or renegotiation,
// server cipher preference, SSL_MODE_RELEASE_BUFFERS (idle connections keep no buffers),
// session tickets and a server-side session cache for resumption. NULL on failure.
SSL_CTX *ferry_tls_server_ctx(int min13);

// Loads a PEM certificate chain and private key from memory; 1 on success. On failure, writes
// OpenSSL's reason into err (size errlen).
int ferry_tls_use_pem(SSL_CTX *ctx, const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                      char *err, size_t errlen);

// ALPN: the server picks the first of its own protocols (wire format: length-prefixed) that the
// client offers; without overlap the handshake continues with no ALPN (RFC 7301 allows it).
void ferry_tls_set_alpn(SSL_CTX *ctx, const unsigned char *protos, unsigned int len);

// SNI: a table of host names (lower case, "*.example.org" wildcards) to contexts. The callback
// switches the connection to the matching context; unknown names keep the default.
typedef struct ferry_sni_table ferry_sni_table;
ferry_sni_table *ferry_sni_table_new(int capacity);
void ferry_sni_table_add(ferry_sni_table *t, const char *name, SSL_CTX *ctx);
void ferry_sni_table_free(ferry_sni_table *t);
void ferry_tls_set_sni(SSL_CTX *default_ctx, ferry_sni_table *t);

// The DNS names of a PEM certificate's subjectAltName (else its CN), written as a
// NUL-separated list into out; returns the number of names.
int ferry_tls_cert_names(const char *cert_pem, size_t cert_len, char *out, size_t outlen);
// notAfter of a PEM certificate as Unix seconds, or -1.
int64_t ferry_tls_cert_not_after(const char *cert_pem, size_t cert_len);

// A self-signed EC P-256 certificate for CN/SAN `name` (plus IP 127.0.0.1 and ::1), valid for
// `days`. PEM texts are malloc'd; the caller frees them. 1 on success.
int ferry_tls_self_signed(const char *name, int days, char **cert_pem, char **key_pem);

// A connection's queue of bytes for the socket: plaintext for TCP, TLS records for TLS. Storage
// grows by doubling and is freed whenever the queue empties, so an idle connection holds none.
typedef struct ferry_outbuf {
    unsigned char *data;
    size_t start;  // first unsent byte
    size_t end;    // one past the last queued byte
    size_t cap;
} ferry_outbuf;
// Appends n bytes; 0 when memory could not be had (nothing appended).
int ferry_outbuf_append(ferry_outbuf *b, const void *p, size_t n);
// Marks n bytes as sent; frees the storage once nothing is left.
void ferry_outbuf_consume(ferry_outbuf *b, size_t n);
void ferry_outbuf_free(ferry_outbuf *b);

// Reads of `ssl` come from the socket `fd`; every TLS record it writes (handshake flights, alerts,
// application data) is appended to `out` instead of going to the socket, and the caller writes
// `out` to the socket. Why: each SSL_write then makes its own record(s), so one TURN message is
// one record (clients such as turnutils_uclient take one SSL_read as one message), while many
// records still leave in one write(2). 1 on success.
int ferry_tls_set_io(SSL *ssl, int fd, ferry_outbuf *out);

// Per-connection helpers.
int ferry_tls_selected_alpn(const SSL *ssl, char *out, size_t outlen);
const char *ferry_tls_version(const SSL *ssl);
// Drains OpenSSL's per-thread error queue into err (size errlen).
void ferry_tls_last_error(char *err, size_t errlen);

#endif

// ---- Keys and signatures for signaling (X25519 identities, JWT verification) ----
typedef struct evp_pkey_st EVP_PKEY;

// X25519: a new private key (32 bytes) and its public key; the shared secret of a private and a
// peer's public key. 1 on success.
int ferry_x25519_keypair(unsigned char priv[32], unsigned char pub[32]);
int ferry_x25519_public(const unsigned char priv[32], unsigned char pub[32]);
int ferry_x25519_shared(const unsigned char priv[32], const unsigned char peer_pub[32], unsigned char out[32]);

// Public keys from JWK members (raw big-endian bytes). NULL on failure; free with EVP_PKEY_free.
EVP_PKEY *ferry_pkey_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen);
EVP_PKEY *ferry_pkey_ec_p256(const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen);
EVP_PKEY *ferry_pkey_ed25519(const unsigned char *x, size_t xlen);
void ferry_pkey_free(EVP_PKEY *k);

// Verifies a JWS signature over data: alg 1 = RS256, 2 = ES256 (JOSE r||s, 64 bytes), 3 = EdDSA.
int ferry_jws_verify(EVP_PKEY *key, int alg, const unsigned char *data, size_t len, const unsigned char *sig, size_t siglen);

// A blocking HTTPS GET (an issuer's JWKS; run on a thread of its own, never on a loop): verifies
// the server's certificate against the system's CAs (or ca_file) and its host name, sends
// HTTP/1.0, reads at most max_body bytes. Connect, handshake and response together take at most
// timeout_seconds (name resolution is the resolver's own). Returns the HTTP status (200
// expected) with a malloc'd body, or -1 with err set.
int ferry_https_get(const char *host, const char *port, const char *path, const char *ca_file, int timeout_seconds,
                    size_t max_body, char **body, size_t *body_len, char *err, size_t errlen);

// ---- A TLS client over a connected non-blocking socket (ferry probe, the tunnel's TLS relay) ----
// The handshake always completes when the server's TLS does; whether the chain and the host name
// verified is read afterwards (ferry_tls_client_verify), so the caller can both refuse an
// unverified server and still say what its certificate was. SNI is `host`; ALPN as wire format.
typedef struct ferry_tls_client ferry_tls_client;
ferry_tls_client *ferry_tls_client_connect(int fd, const char *host, const char *ca_file, const unsigned char *alpn,
                                           unsigned int alpn_len, int timeout_ms, char *err, size_t errlen);
// X509_V_OK (0) when the chain verified against the CAs and matched the host; else the X509
// error code with its text in `out`.
long ferry_tls_client_verify(ferry_tls_client *c, char *out, size_t outlen);
// The leaf's DNS names (NUL-separated, as ferry_tls_cert_names), notAfter (Unix seconds), and
// the chain the server sent as "subject CN <- issuer CN" lines (NUL-separated). Counts / -1.
int ferry_tls_client_names(ferry_tls_client *c, char *out, size_t outlen);
int64_t ferry_tls_client_not_after(ferry_tls_client *c);
int ferry_tls_client_chain(ferry_tls_client *c, char *out, size_t outlen);
const char *ferry_tls_client_version(ferry_tls_client *c);
// Writes all of buf before the timeout: 1, or 0 with err set.
int ferry_tls_client_write(ferry_tls_client *c, const void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
// Reads what is there (waiting up to timeout_ms for something): >0 bytes, 0 closed, -1 error
// (err set), -2 timed out.
long ferry_tls_client_read(ferry_tls_client *c, void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
// Frees the connection (not the socket, which the caller closes).
void ferry_tls_client_free(ferry_tls_client *c);
