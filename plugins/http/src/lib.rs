//! # chiral-plugin-http
//!
//! The HTTP/HTTPS plugin of Chiral:
//! - as a **source** (`open_source`), it probes a URL once (`Range: bytes=0-0`) and then serves
//!   the engine byte ranges over pooled keep-alive connections ([`client`]);
//! - as a **downloader** (`download`), it drives the SDK engine over that source with parallel
//!   connections, or streams the body when the server cannot do ranges ([`download`]);
//! - as a **seeder** (`seed`), it serves files from one built-in HTTP/1.1 server with byte
//!   ranges, at `http://<host>:<port>/<seed-id>/<name>` ([`server`]).
//!
//! Options (config `[plugins.http]`): `threads` (the runtime's workers, see
//! [`chiral_sdk::runtime::PluginRuntime::for_plugin`]).
//!
//! Everything runs on the plugin's own tokio runtime; the SDK adapter spawns every future there.

pub mod client;
pub mod download;
pub mod names;
/// Byte-range headers: one home in the SDK (the daemon's stream endpoint reads `Range` too).
pub use chiral_sdk::http_range as range;
pub mod server;

use std::sync::Arc;

use chiral_sdk::{
    capability, options::Opts, plugin::BoxFut, runtime::PluginRuntime, DownloadOutcome, DownloadRequest, Events,
    HostConfig, PieceSource, Plugin, PluginDescriptor, PluginError, SeedInfo, SeedRequest,
};

/// The plugin: a runtime, one pooled HTTP client and the seed server.
pub struct HttpPlugin {
    // Declared first so it is dropped first: its shutdown stops every task (server included)
    // before the state those tasks point at goes away.
    runtime: PluginRuntime,
    client: reqwest::Client,
    seeder: server::Seeder,
}

impl Plugin for HttpPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new("http", env!("CARGO_PKG_VERSION"))
            .schemes(&["http", "https"])
            .capabilities(capability::DOWNLOAD | capability::SEED | capability::SOURCE | capability::SEED_MANAGE)
            .priority(0)
            .description("HTTP/HTTPS: parallel ranged downloads, and seeding from a built-in HTTP server")
    }

    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError> {
        let runtime = PluginRuntime::for_plugin("http", &Opts::from_abi(&config.options))?;
        // Anything the client builder sets up belongs to this runtime, not the caller's.
        let client = {
            let _entered = runtime.handle().enter();
            client::build_client(&config)?
        };
        let upload_rate = Opts::from_abi(&config.options).get_bytes("max_upload_rate")?;
        let seeder = server::Seeder::new(&config, events.clone(), upload_rate);
        Ok(Self { runtime, client, seeder })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move { download::download(self.client.clone(), request, events).await })
    }

    fn seed(self: Arc<Self>, request: SeedRequest, events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move {
            let own = Opts::from_abi(&request.options).get_bytes("upload_rate")?;
            self.seeder.seed(&request.path, own, &events).await
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
            let source = client::open(&self.client, &identifier).await?;
            let info = source.info();
            events.debug(format!(
                "{}: {} bytes{}, ranges {}",
                info.label,
                info.length,
                if info.length_known { "" } else { " (unknown)" },
                if info.random_access { "yes" } else { "no" }
            ));
            Ok(source)
        })
    }
}

chiral_sdk::export_plugin!(HttpPlugin);

#[cfg(test)]
mod tests;
