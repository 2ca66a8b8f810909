//! Certificates for TLS tests, made fresh per test with rcgen: a CA of its own and server
//! certificates it signs. Nothing is read from or written to the machine's trust store.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority for one test.
pub struct TestCa {
    /// The CA certificate, PEM: what a client is told to trust.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate for the database user `user` (its common name), signed by this CA.
    pub fn client_cert(&self, user: &str) -> IssuedCert {
        self.issue(Vec::new(), user, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate for `names` (host names, or IP addresses as text), signed by this CA.
    pub fn server_cert(&self, names: &[&str]) -> IssuedCert {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        self.issue(
            names,
            "chatcluster test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A certificate for `names` with common name `cn`, for `usage`, and a new key.
    fn issue(&self, names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose) -> IssuedCert {
        let key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the certificate");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
