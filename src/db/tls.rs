//! TLS through rustls with the ring provider, following libpq's `sslmode` semantics.
//!
//! Configurations are built once per process per distinct setting and cached: the
//! no-verification configuration used by `prefer`/`require` costs no file I/O at all; the
//! system root store (rustls-native-certs) is loaded only when a verifying mode needs it,
//! on a blocking thread, once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::io_text;

/// Where trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum RootCerts {
    /// A PEM file (`sslrootcert=<path>` or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

impl RootCerts {
    /// For messages: `root certificate file "/x"` or `the system root store`.
    pub(super) fn describe(&self) -> String {
        match self {
            RootCerts::File(p) => format!("root certificate file \"{}\"", p.display()),
            RootCerts::System => "the system root store".to_string(),
        }
    }
}

/// A client certificate and its key (`sslcert`, `sslkey`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ClientCert {
    /// PEM certificate chain, leaf first.
    pub(super) cert: PathBuf,
    /// PEM private key (PKCS#1, PKCS#8 or SEC1), unencrypted.
    pub(super) key: PathBuf,
}

/// How much of the server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Verify {
    /// Nothing (`prefer`, `require` without a root file): encryption only.
    Nothing,
    /// The chain up to a trusted root, not the host name (`verify-ca`).
    Chain,
    /// Chain and host name (`verify-full`).
    Full,
}

/// Everything a client TLS configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TlsKey {
    pub(super) verify: Verify,
    /// Roots, when `verify` is not `Nothing`.
    pub(super) roots: Option<RootCerts>,
    pub(super) client: Option<ClientCert>,
    pub(super) sni: bool,
}

/// The ring provider, built once; never the process-default provider.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The connector for `key`, from the per-process cache or freshly built. Errors (a missing
/// root file, say) are not cached, so fixing the file and retrying works.
pub(super) async fn connector(key: &TlsKey) -> Result<MakeRustlsConnect, String> {
    static CACHE: Mutex<Vec<(TlsKey, MakeRustlsConnect)>> = Mutex::new(Vec::new());
    let cached = |key: &TlsKey| {
        CACHE
            .lock()
            .ok()
            .and_then(|c| c.iter().find(|(k, _)| k == key).map(|(_, m)| m.clone()))
    };
    if let Some(m) = cached(key) {
        return Ok(m);
    }
    let config = if key.verify == Verify::Nothing && key.client.is_none() {
        build(key)?
    } else {
        // File reads and the native store load block; keep them off the runtime's threads.
        let owned = key.clone();
        tokio::task::spawn_blocking(move || build(&owned))
            .await
            .map_err(|e| format!("loading certificates failed: {e}"))??
    };
    let made = MakeRustlsConnect::new(config);
    if let Ok(mut cache) = CACHE.lock() {
        if let Some((_, m)) = cache.iter().find(|(k, _)| k == key) {
            return Ok(m.clone());
        }
        cache.push((key.clone(), made.clone()));
    }
    Ok(made)
}

/// Builds a client configuration.
fn build(key: &TlsKey) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match key.verify {
        Verify::Nothing => Arc::new(NoVerification(provider.clone())),
        Verify::Chain | Verify::Full => {
            let source = key.roots.clone().unwrap_or(RootCerts::System);
            let roots = load_roots(&source)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("{}: {e}", source.describe()))?;
            if key.verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &key.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let (chain, private_key) = load_client_cert(client)?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| {
                    format!(
                        "client certificate \"{}\" and key \"{}\" cannot be used: {e}",
                        client.cert.display(),
                        client.key.display()
                    )
                })?
        }
    };
    config.enable_sni = key.sni;
    // What libpq 17 sends; older servers ignore it, and it makes sslnegotiation=direct work.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// Reads a PEM file whole, with a message naming it on failure.
fn read_pem(what: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{what} \"{}\" does not exist", path.display())
        } else {
            format!(
                "{what} \"{}\" cannot be read: {}",
                path.display(),
                io_text(&e)
            )
        }
    })
}

/// The certificates of a PEM file; at least one.
fn pem_certs(what: &str, path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} \"{}\" is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} \"{}\" contains no PEM certificates",
            path.display()
        ));
    }
    Ok(certs)
}

/// Loads a root store.
fn load_roots(source: &RootCerts) -> Result<Arc<RootCertStore>, String> {
    match source {
        RootCerts::System => system_roots(),
        RootCerts::File(path) => {
            let what = "root certificate file";
            let mut store = RootCertStore::empty();
            for cert in pem_certs(what, path)? {
                store.add(cert).map_err(|e| {
                    format!(
                        "{what} \"{}\" holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            Ok(Arc::new(store))
        }
    }
}

/// The system roots, loaded once per process (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: Mutex<Option<Arc<RootCertStore>>> = Mutex::new(None);
    let mut slot = ROOTS
        .lock()
        .map_err(|_| "the system root store is unavailable".to_string())?;
    if let Some(roots) = slot.as_ref() {
        return Ok(roots.clone());
    }
    let loaded = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let why = loaded
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "no certificates found in the system root store{why} (set sslrootcert to a CA file)"
        ));
    }
    let store = Arc::new(store);
    *slot = Some(store.clone());
    Ok(store)
}

/// Loads a client certificate chain and its key.
fn load_client_cert(
    client: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = pem_certs("client certificate file", &client.cert)?;
    let what = "client key file";
    let pem = read_pem(what, &client.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{what} \"{}\" holds no usable private key ({e}); encrypted keys are not supported",
            client.key.display()
        )
    })?;
    Ok((chain, key))
}

/// `prefer` / `require`: encryption without authentication of the server, as libpq does.
/// Handshake signatures are still checked, with the provider's algorithms.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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

/// `verify-ca`: the full WebPKI check, except that a certificate not issued for the host
/// name is accepted. The name check runs after the chain check, so a name error means the
/// chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A one-line description of a handshake failure; `roots` names the trust source in use.
pub(super) fn describe_error(e: &rustls::Error, roots: Option<&RootCerts>) -> String {
    match e {
        rustls::Error::InvalidCertificate(cert) => {
            let what = match cert {
                CertificateError::UnknownIssuer => {
                    let source = roots.map(RootCerts::describe).unwrap_or_default();
                    format!(
                        "the server certificate is not signed by a certificate authority in {source} (set sslrootcert to the server's CA file)"
                    )
                }
                CertificateError::BadSignature => "bad certificate signature".to_string(),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("the server certificate has expired ({cert})")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("the server certificate is not valid yet ({cert})")
                }
                CertificateError::NotValidForName => {
                    "the server certificate is not valid for this host name".to_string()
                }
                other => other.to_string(),
            };
            format!("certificate verify failed: {what}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server aborted the handshake ({alert:?})")
        }
        other => other.to_string(),
    }
}

/// A rustls configuration for HTTPS clients (the OTLP exporter): the ring provider, full
/// verification (chain and host name) against the roots in `ca_file` (PEM) when given,
/// else the system's roots.
pub fn https_client_config(ca_file: Option<&std::path::Path>) -> Result<ClientConfig, String> {
    let roots = match ca_file {
        Some(path) => {
            let mut store = RootCertStore::empty();
            for cert in pem_certs("certificate file", &path.to_path_buf())? {
                store
                    .add(cert)
                    .map_err(|e| format!("certificate file \"{}\": {e}", path.display()))?;
            }
            Arc::new(store)
        }
        None => system_roots()?,
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The rustls configuration an HTTP client needs even when it only speaks plain HTTP
/// (reqwest asks for one): it trusts no root, so it can never complete a handshake.
pub fn no_roots_client_config() -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_root_file_is_named() {
        let e = load_roots(&RootCerts::File("/nonexistent/root.crt".into())).unwrap_err();
        assert_eq!(
            e,
            "root certificate file \"/nonexistent/root.crt\" does not exist"
        );
    }

    #[test]
    fn invalid_root_file_is_named() {
        let path = std::env::temp_dir().join(format!("pgc-bad-root-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = load_roots(&RootCerts::File(path.clone())).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("no PEM certificates"), "{e}");
    }

    #[test]
    fn no_verification_config_builds_without_io() {
        let key = TlsKey {
            verify: Verify::Nothing,
            roots: None,
            client: None,
            sni: true,
        };
        let config = build(&key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
    }

    #[test]
    fn unknown_issuer_message_names_the_roots() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let text = describe_error(&e, Some(&RootCerts::System));
        assert!(text.starts_with("certificate verify failed: "), "{text}");
        assert!(text.contains("system root store"), "{text}");
    }
}
