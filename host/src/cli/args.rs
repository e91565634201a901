//! The command line, as users and scripts call it (see docs/cli.md; the contract is stable).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chiral",
    version,
    about = "Download and seed over HTTP, FTP, BitTorrent and the Chiral network through protocol plugins",
    long_about = "Download and seed through protocol plugins.\n\n\
Identifiers (http://, https://, ftp://, magnet:, FILE.torrent, chiral:) are dispatched to the \
plugin that claims them; several identifiers of the same content are downloaded together, piece \
by piece, every piece verified where hashes are known.\n\n\
Identifiers print on stdout, one per line; progress and logs go to stderr; --json gives \
machine-readable output on stdout. Exit code 0 only when what was asked is complete and verified.",
    after_help = "Examples:\n  chiral get https://example.org/big.iso https://mirror.example.net/big.iso -o ~/Downloads\n  chiral seed ./big.iso --via http\n  chiral plugins\n  chiral demo"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// Directory searched for plugins before all others (repeatable)
    #[arg(long = "plugin-path", value_name = "DIR", global = true)]
    pub plugin_path: Vec<PathBuf>,
    /// State directory (resume files, seeds, identity); lets several nodes share a machine
    #[arg(long, value_name = "DIR", env = "CHIRAL_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Config file (TOML); default: $XDG_CONFIG_HOME/chiral/config.toml
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Chiral network peer to join (repeatable)
    #[arg(long, value_name = "MULTIADDR", global = true)]
    pub bootstrap: Vec<String>,
    /// Do not use DHTs
    #[arg(long, global = true)]
    pub no_dht: bool,
    /// Address servers listen on (default 0.0.0.0)
    #[arg(long, value_name = "ADDR", global = true)]
    pub listen: Option<String>,
    /// Port servers listen on (default: any free port)
    #[arg(long, value_name = "PORT", global = true)]
    pub port: Option<u16>,
    /// Host name or address put in printed URLs (default: the listen address, or 127.0.0.1)
    #[arg(long, value_name = "HOST", global = true)]
    pub advertise: Option<String>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bar
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Proxy for every outgoing connection: socks5h://[USER:PASS@]HOST:PORT (names resolved by
    /// the proxy), socks5://, or http:// (CONNECT). While set: no DHT, no UDP trackers, no
    /// direct connection of any kind
    #[arg(long, value_name = "URL", global = true)]
    pub proxy: Option<String>,
    /// Most bytes per second downloaded, all sources together (e.g. 10M = 10 MiB/s)
    #[arg(long = "max-download-rate", value_name = "SIZE", global = true, value_parser = parse_rate)]
    pub max_download_rate: Option<u64>,
    /// Most bytes per second uploaded by each seeding plugin (e.g. 512k)
    #[arg(long = "max-upload-rate", value_name = "SIZE", global = true, value_parser = parse_rate)]
    pub max_upload_rate: Option<u64>,
}

/// A rate as a size per second (`10M`, `512k`, a number of bytes); 0 means no limit.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    chiral_sdk::options::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (e.g. 10M, 512k, 1000000)"))
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Download; several identifiers of the same content are sources of one download
    Get(GetArgs),
    /// Serve PATH: print each identifier first, then serve until SIGINT/SIGTERM or `chiral stop`
    Seed(SeedArgs),
    /// List the seeds started with this data dir: running ones asked live (with bytes served), stopped ones
    Seeds(SeedsArgs),
    /// Stop the running seeds named by TARGET: a seed id, an identifier (URL, magnet, chiral:) or a path
    Stop(TargetArgs),
    /// Stop TARGET if it is running and forget it (the files are never touched)
    Remove(TargetArgs),
    /// List the plugins found, loaded and skipped (with why), and which wins each scheme
    Plugins(PluginsArgs),
    /// Make a .torrent of a file or folder; prints its magnet link
    Create(CreateArgs),
    /// Run a long-lived Chiral network node; prints its multiaddrs, serves until SIGINT/SIGTERM
    Node(NodeArgs),
    /// Look a word up on the Chiral DHT; prints matching content ids with names and sizes
    Search(SearchArgs),
    /// Seed a generated file on loopback and download it through the plugins, with progress
    Demo(DemoArgs),
    /// Run the node as a service: many downloads and seeds, an HTTP API and the web page
    Daemon(DaemonArgs),
    /// The node's wallet: make, import, show its address and balance
    Wallet(WalletArgs),
    /// What this node owes and paid per wallet; `settle` pays now, `received` shows what it was paid
    Payments(PaymentsArgs),
}

impl Command {
    /// Whether the command was asked for `--json` output (a failure is then reported on stdout
    /// as `{"ok":false,"error":...}` too).
    pub(crate) fn json(&self) -> bool {
        matches!(
            self,
            Command::Get(GetArgs { json: true, .. })
                | Command::Demo(DemoArgs { json: true, .. })
                | Command::Create(CreateArgs { json: true, .. })
                | Command::Seed(SeedArgs { json: true, .. })
                | Command::Seeds(SeedsArgs { json: true })
                | Command::Stop(TargetArgs { json: true, .. })
                | Command::Remove(TargetArgs { json: true, .. })
                | Command::Payments(PaymentsArgs { json: true, .. })
        ) || match self {
            Command::Wallet(w) => w.json(),
            Command::Payments(PaymentsArgs { what: Some(PaymentsCommand::Received { json: true }), .. }) => true,
            _ => false,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    /// File or folder to describe
    pub path: PathBuf,
    /// The .torrent file to write
    #[arg(short = 'o', long = "output", value_name = "FILE.torrent")]
    pub output: PathBuf,
    /// Tracker announce URL (repeatable; the first is `announce`, all go in `announce-list`)
    #[arg(long, value_name = "URL")]
    pub tracker: Vec<String>,
    /// Web seed URL (BEP 19, repeatable)
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seed: Vec<String>,
    /// Piece size in bytes (power of two); default: chosen from the content size
    #[arg(long = "piece-size", value_name = "BYTES")]
    pub piece_size: Option<u64>,
    /// Set the private flag (BEP 27: trackers only, no DHT or PEX)
    #[arg(long)]
    pub private: bool,
    /// Plugin that makes it (default: the one claiming .torrent files)
    #[arg(long, value_name = "PLUGIN")]
    pub via: Option<String>,
    /// Print the plugin's JSON answer on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// Identifiers: URLs, magnet links, .torrent files, chiral: ids
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Output folder
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// Print a machine-readable summary on stdout
    #[arg(long)]
    pub json: bool,
    /// Plugin to use where several claim an identifier (e.g. rqbit, bittorrent)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// Parallel connections per source [default: 8, or the config's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: Option<u32>,
    /// Expected SHA-256 of the whole file (hex); checked before the final rename
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Keep seeding what was downloaded until SIGINT/SIGTERM
    #[arg(long)]
    pub seed: bool,
    /// Only these files of a multi-file torrent: numbers and ranges counted from 1 in the
    /// torrent's order (`1,3-5`) or a glob (`'*.mkv'`); the others are neither created nor written
    #[arg(long, value_name = "LIST|GLOB")]
    pub files: Option<String>,
    /// Fetch pieces in order, first to last, instead of rarest first (to play a file as it
    /// arrives)
    #[arg(long)]
    pub sequential: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SeedArgs {
    /// File to serve
    #[arg(required_unless_present = "all")]
    pub path: Option<PathBuf>,
    /// Serve again every remembered seed that is not running (same plugins and options)
    #[arg(long, conflicts_with_all = ["path", "via", "tracker", "options"])]
    pub all: bool,
    /// Plugin to seed through (repeatable); default: every plugin that can seed
    #[arg(long, value_name = "PLUGIN")]
    pub via: Vec<String>,
    /// Tracker announce URL for BitTorrent seeds (repeatable)
    #[arg(long, value_name = "URL")]
    pub tracker: Vec<String>,
    /// A plugin option KEY=VALUE passed to every seeding plugin (repeatable), e.g.
    /// `info_hash=<40 hex>` or `mirror=URL` for the Chiral network
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
    /// Print the seeds as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Args, Debug)]
pub(crate) struct SeedsArgs {
    /// Print the seeds as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct TargetArgs {
    /// Seed id, identifier (URL, magnet link, chiral:<id>) or path of the seeded file
    pub target: String,
    /// Print what was done as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PluginsArgs {
    /// Print JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Size of the generated file in MiB
    #[arg(long, default_value_t = 256, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub size: u64,
    /// Print a machine-readable summary on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// Plugin that runs the node
    #[arg(long, value_name = "PLUGIN", default_value = "chiral")]
    pub via: String,
    /// Print the node's addresses as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SearchArgs {
    /// Word of a file name (case-insensitive)
    pub word: String,
    /// Plugin to search with
    #[arg(long, value_name = "PLUGIN", default_value = "chiral")]
    pub via: String,
    /// Print the plugin's JSON answer
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DaemonArgs {
    /// Address and port of the API and page [default: 127.0.0.1:7878, or the config's];
    /// port 0 picks a free one. The first line on stdout is the page's URL with its token
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// Downloads transferring at once [default: 5, or the config's]
    #[arg(long = "max-active", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_active: Option<u64>,
    /// Where downloads go when no folder is given [default: <data dir>/downloads]
    #[arg(long = "download-dir", value_name = "DIR")]
    pub download_dir: Option<PathBuf>,
    /// Another name the Host header may give (repeatable): the machine's name or LAN address
    /// when --http listens beyond loopback. Other names are refused (DNS rebinding)
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_host: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct WalletArgs {
    #[command(subcommand)]
    pub what: WalletCommand,
}

impl WalletArgs {
    fn json(&self) -> bool {
        matches!(self.what, WalletCommand::Address { json: true } | WalletCommand::Balance { json: true })
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum WalletCommand {
    /// Make a new key in an encrypted keystore (<data dir>/wallet.json, or [payments] keystore);
    /// passphrase from CHIRAL_WALLET_PASSPHRASE or a prompt
    New,
    /// Store the key in FILE (0x and 64 hex digits) in an encrypted keystore
    Import {
        /// File holding the private key
        #[arg(long = "private-key-file", value_name = "FILE")]
        private_key_file: PathBuf,
    },
    /// Print the wallet's address
    Address {
        /// Print {"address": ...}
        #[arg(long)]
        json: bool,
    },
    /// Print the wallet's balance on the chain of [payments] rpc
    Balance {
        /// Print {"address": ..., "balance_wei": ...}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct PaymentsArgs {
    #[command(subcommand)]
    pub what: Option<PaymentsCommand>,
    /// Print {"payments": [...]} on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PaymentsCommand {
    /// Pay everything owed now and wait for the receipts
    Settle,
    /// Transfers into this node's wallet found on the chain, per payer, with the bytes served to it
    Received {
        /// Print {"received": [...], "total_wei": ...}
        #[arg(long)]
        json: bool,
    },
}
