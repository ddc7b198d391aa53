//! Certificates made on the spot for the TLS tests: a test CA (its PEM file can be handed to
//! the prober as `SSL_CERT_FILE`), server certificates it signs, and self-signed ones.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What a TLS server presents.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate as PEM, for `SSL_CERT_FILE`.
    pub pem_file: PathBuf,
}

impl TestCa {
    /// A new CA whose certificate is written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "xnlb test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("self-signed CA");
        std::fs::create_dir_all(dir).expect("CA dir");
        let pem_file = dir.join("ca.pem");
        std::fs::write(&pem_file, issuer.pem()).expect("write CA");
        Self { issuer, pem_file }
    }

    /// A server certificate for `names`, signed by this CA.
    pub fn server(&self, names: &[&str]) -> TlsIdentity {
        let key = KeyPair::generate().expect("key");
        let params = server_params(names);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        TlsIdentity {
            chain: vec![cert.der().clone()],
            key: private_key(&key),
        }
    }
}

/// A certificate for `names` that signs itself: what an Exchange server has out of the box.
pub fn self_signed(names: &[&str]) -> TlsIdentity {
    let key = KeyPair::generate().expect("key");
    let cert = server_params(names).self_signed(&key).expect("self-sign");
    TlsIdentity {
        chain: vec![cert.der().clone()],
        key: private_key(&key),
    }
}

fn server_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("names");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params
}

fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}
