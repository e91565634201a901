//! The progress bar on stderr: bytes, speed, ETA and sources, fed by engine events.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use chiral_host::engine::EngineEvent;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct ProgressUi {
    bar: ProgressBar,
    /// stderr is no terminal (a log file, a pipe): notices go out as plain lines.
    plain: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sources: Vec<String>,
    dropped: usize,
    started: Option<Instant>,
    fresh: u64,
    /// Bytes per source, in the order of `sources`.
    bytes: Vec<u64>,
    name: String,
}

impl State {
    /// `name · http 120 MiB · ftp 40 MiB · bittorrent 10 MiB` (each source by its protocol).
    fn message(&self) -> String {
        let mut parts = vec![self.name.clone()];
        for (i, label) in self.sources.iter().enumerate() {
            let proto = label.split(':').next().unwrap_or(label);
            let b = self.bytes.get(i).copied().unwrap_or(0);
            parts.push(format!("{proto} {}", HumanBytes(b)));
        }
        if self.dropped > 0 {
            parts.push(format!("{} dropped", self.dropped));
        }
        chiral_sdk::text::line(&parts.join(" · "))
    }
}

impl ProgressUi {
    pub(crate) fn new(quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr_with_hz(8) };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {wide_msg} {bytes:>10}/{total_bytes:<10} [{bar:30.cyan/blue}] {binary_bytes_per_sec:>12} ETA {eta:>4}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        let plain = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self { bar, plain, state: Mutex::new(State::default()) }
    }

    /// A notice above the bar, or a plain line when there is no bar to draw.
    fn notice(&self, line: String) {
        let line = chiral_sdk::text::line(&line);
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub(crate) fn on_event(&self, e: EngineEvent) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            EngineEvent::Started { name, total, resumed, sources } => {
                self.bar.set_length(total);
                self.bar.set_position(resumed);
                self.bar.reset_eta();
                st.bytes = vec![0; sources.len()];
                st.sources = sources;
                st.started = Some(Instant::now());
                st.name = name;
                self.bar.set_message(st.message());
                if resumed > 0 && resumed < total {
                    self.notice(format!("resuming: {} already on disk", HumanBytes(resumed)));
                }
            }
            EngineEvent::Piece { source, bytes } => {
                st.fresh += bytes;
                if let Some(b) = st.bytes.get_mut(source) {
                    *b += bytes;
                }
                self.bar.inc(bytes);
                self.bar.set_message(st.message());
            }
            EngineEvent::SourceDropped { label, reason } => {
                st.dropped += 1;
                self.notice(format!("dropped source {label}: {reason}"));
                self.bar.set_message(st.message());
            }
            EngineEvent::SourceAdded { label } => {
                st.sources.push(label);
                st.bytes.push(0);
                self.bar.set_message(st.message());
            }
            EngineEvent::Adopted { label, done } => {
                self.bar.set_position(done);
                self.notice(format!("piece hashes from {label} adopted: {} on disk verified", HumanBytes(done)));
            }
            EngineEvent::AwaitingTrustRoot => {
                self.bar.set_message("waiting for the hashes the identifiers name, to check what is on disk");
                self.notice("every byte is on disk; waiting for the hashes the identifiers name (a magnet's metadata) to check them".into());
            }
            EngineEvent::Finishing => self.bar.set_message("verifying and finishing"),
            _ => {}
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
