//! A signed APT archive for tests: genuine `.deb` files (downloaded into the tools directory by
//! `scripts/test`), indexed by `apt-ftparchive` (`Packages`, `.gz`, `.xz` and by-hash copies),
//! `InRelease` and `Release.gpg` signed with a throw-away key, served from a temporary
//! directory by a [`StaticServer`].

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use sha2::{Digest, Sha256, Sha512};
use tempfile::TempDir;

use crate::static_server::StaticServer;

/// The set-up line printed when a tool or a package is missing.
pub const SETUP_HINT: &str = "run `scripts/test` once (it installs apt-utils, gnupg and xz-utils, \
     and downloads the test packages into ~/.cache/proxyd-dev/tools/debs)";

/// Where `scripts/test` puts the genuine `.deb` files.
pub fn debs_dir() -> PathBuf {
    crate::tools_dir().join("debs")
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}. Fix: {SETUP_HINT}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The archive: suite `stable`, component `main`, architecture `amd64`.
pub struct AptRepository {
    pub server: StaticServer,
    dir: TempDir,
}

impl AptRepository {
    /// An archive of the `.deb` files whose names start with one of `packages`.
    pub async fn start(packages: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "-q", "--passphrase", "", "--quick-gen-key"])
            .args([
                "proxyd test <apt@example.invalid>",
                "rsa2048",
                "sign",
                "never",
            ]));
        let key = run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--export"]));
        std::fs::write(dir.path().join("key.gpg"), key).unwrap();
        let root = dir.path().join("archive");
        let served = root.clone();
        let server = StaticServer::start().await;
        server.set_fallback(Box::new(move |path| {
            let relative = path.trim_start_matches('/');
            if relative.split('/').any(|s| s == ".." || s.is_empty()) {
                return None;
            }
            let file = served.join(relative);
            file.is_file()
                .then(|| std::fs::read(&file).ok())
                .flatten()
                .map(|b| (Bytes::from(b), "application/octet-stream".into()))
        }));
        let repo = Self { server, dir };
        repo.publish(packages);
        repo
    }

    /// The archive root URL (the folder holding `dists/` and `pool/`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The keyring apt checks the signature with (`signed-by=`).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.gpg")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// The pool path (`/pool/main/FILE`) of the `.deb` whose name starts with `package`.
    pub fn pool_path(&self, package: &str) -> String {
        let name = std::fs::read_dir(self.root().join("pool/main"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(package))
            .unwrap_or_else(|| panic!("no {package} in the pool"));
        format!("/pool/main/{name}")
    }

    /// (Re)publish the archive with the `.deb` files whose names start with one of `packages`:
    /// new indexes, by-hash copies, a new signed `InRelease` and `Release.gpg`.
    pub fn publish(&self, packages: &[&str]) {
        let root = self.root();
        let pool = root.join("pool/main");
        let _ = std::fs::remove_dir_all(&pool);
        std::fs::create_dir_all(&pool).unwrap();
        let debs: Vec<PathBuf> = std::fs::read_dir(debs_dir())
            .unwrap_or_else(|e| panic!("{}: {e}. Fix: {SETUP_HINT}", debs_dir().display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.ends_with(".deb") && packages.iter().any(|pkg| name.starts_with(pkg))
            })
            .collect();
        assert_eq!(
            debs.len(),
            packages.len(),
            "not every test package is in {}. Fix: {SETUP_HINT}",
            debs_dir().display()
        );
        for deb in &debs {
            std::fs::copy(deb, pool.join(deb.file_name().unwrap())).unwrap();
        }
        let binary = root.join("dists/stable/main/binary-amd64");
        let _ = std::fs::remove_dir_all(&binary);
        std::fs::create_dir_all(binary.join("by-hash/SHA256")).unwrap();
        std::fs::create_dir_all(binary.join("by-hash/SHA512")).unwrap();
        let index = run(Command::new("apt-ftparchive")
            .current_dir(&root)
            .args(["packages", "pool/main"]));
        std::fs::write(binary.join("Packages"), &index).unwrap();
        run(Command::new("gzip")
            .args(["-9nkf"])
            .arg(binary.join("Packages")));
        run(Command::new("xz")
            .args(["-kf"])
            .arg(binary.join("Packages")));
        for name in ["Packages", "Packages.gz", "Packages.xz"] {
            let body = std::fs::read(binary.join(name)).unwrap();
            let sha256 = hex::encode(Sha256::digest(&body));
            let sha512 = hex::encode(Sha512::digest(&body));
            std::fs::write(binary.join("by-hash/SHA256").join(sha256), &body).unwrap();
            std::fs::write(binary.join("by-hash/SHA512").join(sha512), body).unwrap();
        }
        let release = run(Command::new("apt-ftparchive").current_dir(&root).args([
            "-o",
            "APT::FTPArchive::Release::Suite=stable",
            "-o",
            "APT::FTPArchive::Release::Codename=stable",
            "-o",
            "APT::FTPArchive::Release::Architectures=amd64",
            "-o",
            "APT::FTPArchive::Release::Components=main",
            "release",
            "dists/stable",
        ]));
        // apt asks for indexes by their hash when the Release says so.
        let release = String::from_utf8(release).unwrap().replacen(
            "Components: main\n",
            "Components: main\nAcquire-By-Hash: yes\n",
            1,
        );
        let stable = root.join("dists/stable");
        std::fs::write(stable.join("Release"), &release).unwrap();
        self.sign(&stable);
    }

    fn sign(&self, stable: &Path) {
        let gnupg = self.dir.path().join("gnupg");
        run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--yes", "--clearsign", "-o"])
            .arg(stable.join("InRelease"))
            .arg(stable.join("Release")));
        run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--yes", "-abs", "-o"])
            .arg(stable.join("Release.gpg"))
            .arg(stable.join("Release")));
    }
}

impl Drop for AptRepository {
    fn drop(&mut self) {
        // gpg started an agent for this home: stop it.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path().join("gnupg"))
            .args(["--kill", "gpg-agent"])
            .status();
    }
}
