/*
 * libssl.so shim for Debian bookworm's Orthanc 1.10.1 (civetweb 1.15 + OpenSSL 3).
 *
 * civetweb loads OpenSSL at run time: dlopen("libssl.so"), then dlsym() of every function it
 * uses. SSL_get_peer_certificate is one of them, but OpenSSL 3 turned it into a macro for
 * SSL_get1_peer_certificate, so the symbol is gone, civetweb stores a NULL pointer and the
 * first HTTPS connection crashes Orthanc (segfault at address 0).
 *
 * This library is linked against libssl.so.3 and libcrypto.so.3 and defines only the missing
 * symbol. Put its directory first in LD_LIBRARY_PATH: civetweb's dlopen("libssl.so") finds this
 * file, and dlsym() finds every other function through its dependencies.
 *
 * SSL_get1_peer_certificate has the reference-counting semantics of the OpenSSL 1.1
 * SSL_get_peer_certificate (the caller frees the returned certificate), so this is an exact
 * replacement. The prototypes are declared here so that the build needs only gcc.
 */

typedef struct ssl_st SSL;
typedef struct x509_st X509;

X509 *SSL_get1_peer_certificate(const SSL *ssl);

X509 *SSL_get_peer_certificate(const SSL *ssl)
{
    return SSL_get1_peer_certificate(ssl);
}
