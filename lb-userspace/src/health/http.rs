//! One HTTP or HTTPS health check: a fresh TCP connection to the backend, TLS when asked (SNI
//! from `host`), `GET path` with a `Host` header, and the status line. Only `expect_status`
//! counts as healthy; every failure says which step failed and why, in words an administrator
//! can act on (`connect: connection refused`, `TLS: the backend's certificate has expired`,
//! `HTTP 302 Found (Location: /owa/)`). The time limit is the scheduler's; the probe reports its
//! progress so a timeout can say what it was waiting for.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, ConfigBuilder, DigitallySignedStruct, SignatureScheme, WantsVerifier,
    client::WantsClientCert,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::{
    probe::{Outcome, connect_failure, io_cause},
    schedule::Progress,
};
use crate::config::HttpCheck;

const USER_AGENT: &str = concat!("xnlb-health/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug, PartialEq)]
pub struct HttpProbe {
    pub addr: SocketAddr,
    pub check: HttpCheck,
}

impl HttpProbe {
    pub fn new(addr: SocketAddr, check: HttpCheck) -> Self {
        Self { addr, check }
    }

    /// Runs one probe, noting in `progress` what it waits for.
    pub async fn run(&self, progress: &Progress) -> Outcome {
        progress.at("connecting");
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect_failure(&e))?;
        let _ = tcp.set_nodelay(true);
        if self.check.tls {
            progress.at("in the TLS handshake");
            let name = self.server_name()?;
            let tls = TlsConnector::from(tls_config(self.check.verify_tls))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {}", tls_cause(&e)))?;
            self.exchange(tls, progress).await
        } else {
            self.exchange(tcp, progress).await
        }
    }

    /// SNI and certificate name: `host` when given, else the backend's address.
    fn server_name(&self) -> Result<ServerName<'static>, String> {
        match &self.check.host {
            Some(h) => ServerName::try_from(h.clone())
                .map_err(|_| format!("TLS: `{h}` is not a valid server name")),
            None => Ok(ServerName::IpAddress(self.addr.ip().into())),
        }
    }

    fn host_header(&self) -> String {
        let default_port = if self.check.tls { 443 } else { 80 };
        let host = match &self.check.host {
            Some(h) => h.clone(),
            None => self.addr.ip().to_string(),
        };
        if self.addr.port() == default_port {
            host
        } else {
            format!("{host}:{}", self.addr.port())
        }
    }

    /// GET over an established (maybe TLS) connection; the connection closes when this returns.
    async fn exchange<S>(&self, stream: S, progress: &Progress) -> Outcome
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        progress.at("waiting for the response");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let request = Request::get(self.check.path.as_str())
            .header(header::HOST, self.host_header())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("HTTP request: {e}"))?;
        // The connection is driven here, not in a spawned task, so nothing outlives the probe.
        // It may finish (Connection: close) in the same poll that delivers the response.
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = tokio::select! {
            biased;
            r = &mut send => r,
            r = connection => match r {
                Ok(()) => send.await,
                Err(e) => return Err(format!("HTTP: {}", hyper_cause(&e)).into()),
            },
        }
        .map_err(|e| format!("HTTP: {}", hyper_cause(&e)))?;
        let status = response.status();
        let line = status_line(status);
        if self.check.expect_status.contains(&status.as_u16()) {
            Ok(line)
        } else if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("none");
            Err(format!("{line} (Location: {location})").into())
        } else {
            Err(line.into())
        }
    }
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// tokio-rustls wraps rustls errors in io::Error; show the rustls one, certificate problems
/// in words (rustls says `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`).
fn tls_cause(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(problem)) => {
            format!("the backend's certificate {}", certificate_problem(problem))
        }
        Some(tls) => tls.to_string(),
        None => io_cause(e),
    }
}

/// What is wrong with a certificate, completing "the backend's certificate ...".
fn certificate_problem(problem: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match problem {
        C::UnknownIssuer => "is signed by an authority this host does not trust (not in its CA \
                             store; `verify_tls: false` accepts it)"
            .into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "is not valid for the name probed (`health.http.host`, else the backend's address)"
                .into()
        }
        C::Expired | C::ExpiredContext { .. } => "has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet (check this host's clock)".into()
        }
        C::Revoked => "is revoked".into(),
        C::BadSignature => "has a signature that does not verify".into(),
        C::BadEncoding => "cannot be parsed".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "is not meant for a TLS server (its extended key usage)".into()
        }
        other => {
            let said = format!("{other:?}");
            if said.contains("CaUsedAsEndEntity") {
                "is a CA certificate, not the server's own (the server sends its CA's \
                 certificate in place of its own)"
                    .into()
            } else {
                format!("is refused ({said})")
            }
        }
    }
}

/// hyper's error plus its cause (`connection reset by peer`), which hyper keeps apart.
fn hyper_cause(e: &hyper::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(src) => match src.downcast_ref::<std::io::Error>() {
            Some(io) => format!("{e}: {}", io_cause(io)),
            None => format!("{e}: {src}"),
        },
        None => e.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The two TLS client configs, built once: verifying against the system's trust store
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), or accepting any certificate.
fn tls_config(verify: bool) -> Arc<ClientConfig> {
    static VERIFYING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static ACCEPTING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if verify {
        VERIFYING
            .get_or_init(|| client_config(|b| b.with_root_certificates(system_roots())))
            .clone()
    } else {
        ACCEPTING
            .get_or_init(|| {
                client_config(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(
                            AcceptAnyCertificate(provider()),
                        ))
                })
            })
            .clone()
    }
}

/// A client config with the ring provider, its default TLS versions, HTTP/1.1 by ALPN and the
/// certificate verification `verifier` chooses.
fn client_config(
    verifier: impl FnOnce(
        ConfigBuilder<ClientConfig, WantsVerifier>,
    ) -> ConfigBuilder<ClientConfig, WantsClientCert>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let mut config = verifier(builder).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!("loading the system's CA certificates: {e}");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        warn!(
            "no CA certificates found: every probe with verify_tls: true will fail \
             (install ca-certificates or set SSL_CERT_FILE)"
        );
    }
    roots
}

/// `verify_tls: false`: any certificate for any name is accepted (self-signed Exchange
/// certificates), but the handshake's signatures are still checked, so the session is real TLS.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_read_like_sentences() {
        assert_eq!(
            status_line(StatusCode::SERVICE_UNAVAILABLE),
            "HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn host_header_names_the_port_only_when_it_is_not_the_default() {
        let check = |tls, host: Option<&str>| HttpCheck {
            path: "/".into(),
            port: 443,
            tls,
            verify_tls: true,
            host: host.map(String::from),
            expect_status: vec![200],
        };
        let on = |port, tls, host| {
            HttpProbe::new(SocketAddr::from(([198, 18, 2, 11], port)), check(tls, host))
                .host_header()
        };
        assert_eq!(on(443, true, Some("mail.contoso.com")), "mail.contoso.com");
        assert_eq!(
            on(8443, true, Some("mail.contoso.com")),
            "mail.contoso.com:8443"
        );
        assert_eq!(on(80, false, None), "198.18.2.11");
        assert_eq!(on(443, false, None), "198.18.2.11:443");
    }
}
