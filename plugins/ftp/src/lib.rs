//! # chiral-plugin-ftp
//!
//! The FTP/FTPS plugin of Chiral:
//! - as a **source** (`open_source`), it logs in once to learn what an `ftp://` or `ftps://`
//!   identifier names (a file's size by `SIZE`, a folder's tree by `MLSD`/`LIST`) and then serves
//!   the engine byte ranges (`REST` + `RETR`) over a pool of logged-in sessions, one per
//!   concurrent fetch ([`source`], [`conn`]);
//! - as a **downloader** (`download`), it drives the SDK engine over that source, or streams
//!   each file in one `RETR` when the server cannot restart at an offset ([`download`]);
//! - as a **seeder** (`seed`), it serves files read-only from an embedded FTP server (libunftp)
//!   at `ftp://<host>:<port>/<name>`, or uploads them elsewhere with `ftp_upload=URL` ([`seed`]).
//!
//! Credentials come from the URL (`ftp://user:password@host/...`), else the plugin options
//! `user` / `password` (config `[plugins.ftp]`), else `CHIRAL_FTP_USER` / `CHIRAL_FTP_PASSWORD`,
//! else the anonymous login. The password never appears in a message or a label ([`target`]).
//! `ftps://` trusts the platform's roots plus the PEM file of the option `ca_file` (or
//! `CHIRAL_FTP_CA_FILE`). The option `threads` sizes the plugin's runtime.
//!
//! Everything runs on the plugin's own tokio runtime; the SDK adapter spawns every future there.

pub mod conn;
pub mod download;
pub mod reply;
pub mod seed;
pub mod source;
pub mod target;

use std::sync::Arc;

use chiral_sdk::{
    capability, options::Opts, plugin::BoxFut, runtime::PluginRuntime, DownloadOutcome, DownloadRequest, Events,
    HostConfig, PieceSource, Plugin, PluginDescriptor, PluginError, SeedInfo, SeedRequest,
};
use suppaftp::tokio_rustls::rustls::ClientConfig;

use crate::target::{Defaults, Target};

/// Environment variable naming extra trusted roots (PEM) for `ftps://`.
pub const ENV_CA_FILE: &str = "CHIRAL_FTP_CA_FILE";

/// Settings every call shares: the configured credentials and the TLS client setup.
pub struct Settings {
    /// The plugin's options (from the host's config file).
    options: Opts,
    env: fn(&str) -> Option<String>,
    tls: conn::TlsSettings,
    /// The host's proxy: every control and data connection goes through it.
    proxy: Option<chiral_sdk::net::Proxy>,
}

fn real_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl Settings {
    pub fn new(options: Opts, env: fn(&str) -> Option<String>) -> Self {
        let ca_file = options
            .get_str("ca_file")
            .map(str::to_string)
            .or_else(|| env(ENV_CA_FILE))
            .filter(|v| !v.trim().is_empty());
        Self { options, env, tls: conn::TlsSettings::new(ca_file), proxy: None }
    }

    /// The same, with every connection through `proxy`.
    pub fn with_proxy(mut self, proxy: Option<chiral_sdk::net::Proxy>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Parses `identifier` with the credentials of `extra` (a request's options), then the
    /// plugin's options, then the environment.
    pub fn target(&self, identifier: &str, extra: &Opts) -> Result<Target, PluginError> {
        let options = self.options.merged_with(extra);
        let mut t = Target::parse(identifier, &Defaults::from_options_and_env(&options, self.env))?;
        t.proxy = self.proxy.clone();
        Ok(t)
    }

    /// The TLS config for an `ftps://` target, `None` for plain FTP.
    pub fn tls_for(&self, target: &Target) -> Result<Option<Arc<ClientConfig>>, PluginError> {
        if target.secure {
            self.tls.config().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The plugin: a runtime, the shared settings and the seed server.
pub struct FtpPlugin {
    // Declared first so it is dropped first: its shutdown stops every task (server included)
    // before the state those tasks point at goes away.
    runtime: PluginRuntime,
    settings: Arc<Settings>,
    seeder: seed::Seeder,
}

impl Plugin for FtpPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new("ftp", env!("CARGO_PKG_VERSION"))
            .schemes(&["ftp", "ftps"])
            .capabilities(capability::DOWNLOAD | capability::SEED | capability::SOURCE | capability::SEED_MANAGE)
            .priority(0)
            .description(
                "FTP/FTPS: parallel REST-ranged downloads of files and folders, and seeding from a built-in FTP server",
            )
    }

    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError> {
        let options = Opts::from_abi(&config.options);
        let runtime = PluginRuntime::for_plugin("ftp", &options)?;
        let proxy = chiral_sdk::net::Proxy::from_config(&config).map_err(|e| PluginError::invalid(e.to_string()))?;
        if let Some(p) = &proxy {
            events.info(format!("ftp: every connection goes through the proxy {p}"));
        }
        let upload_rate = options.get_bytes("max_upload_rate")?;
        let settings = Arc::new(Settings::new(options, real_env).with_proxy(proxy));
        let seeder = seed::Seeder::new(&config, events, upload_rate);
        Ok(Self { runtime, settings, seeder })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move { download::download(self.settings.clone(), request, events).await })
    }

    fn seed(self: Arc<Self>, request: SeedRequest, events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move {
            let options = Opts::from_abi(&request.options);
            self.seeder.seed(&self.settings, &request.path, &options, &events).await
        })
    }

    fn list_seeds(&self) -> Vec<SeedInfo> {
        self.seeder.list()
    }

    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        self.seeder.stop(id)
    }

    fn open_source(self: Arc<Self>, identifier: String, events: Events) -> BoxFut<Arc<dyn PieceSource>> {
        Box::pin(async move {
            let target = self.settings.target(&identifier, &Opts::default())?;
            let tls = self.settings.tls_for(&target)?;
            let source = source::open(target, tls, &events).await?;
            Ok(Arc::new(source) as Arc<dyn PieceSource>)
        })
    }
}

chiral_sdk::export_plugin!(FtpPlugin);

#[cfg(test)]
mod tests;
