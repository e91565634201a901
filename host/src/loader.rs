//! Loading one plugin library.
//!
//! The plain `chiral_plugin_sdk_version` symbol is read first (libloading), so a plugin built
//! against another SDK is refused in one line before abi_stable's layout check (whose report is
//! pages long). abi_stable's `RootModule::load_from_*` caches one module per type, so each
//! library is initialised through its own header. Libraries are never unloaded.

use std::{ffi::CStr, os::raw::c_char, path::Path};

use abi_stable::library::lib_header_from_path;
use chiral_sdk::{abi::SDK_VERSION_SYMBOL, PluginDescriptor, PluginModRef};

/// A library that passed every check.
#[derive(Clone)]
pub struct LoadedLibrary {
    pub descriptor: PluginDescriptor,
    pub module: PluginModRef,
}

/// Why a library was not loaded; each reads as one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// Ownership or mode that would let someone else change what runs as the user.
    #[error("{0}")]
    Permissions(String),
    #[error("not a loadable library: {0}")]
    NotLoadable(String),
    #[error("not a Chiral plugin (no chiral_plugin_sdk_version symbol)")]
    NoVersionSymbol,
    #[error("not a Chiral plugin (null sdk version)")]
    NullVersion,
    #[error(transparent)]
    Sdk(#[from] chiral_sdk::SdkMismatch),
    #[error("abi_stable: {0}")]
    Header(String),
    /// The first difference between the plugin's layout and ours.
    #[error("incompatible plugin layout: {0}")]
    Layout(String),
    #[error("plugin root module: {0}")]
    RootModule(String),
    #[error("descriptor failed: {0}")]
    Descriptor(chiral_sdk::PluginError),
    #[error("descriptor has an empty name")]
    EmptyName,
}

/// Why a library was not loaded, and the SDK version it says it was built against when it got
/// that far (kept for `chiral plugins --json`).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub error: LoadError,
    pub sdk_version: Option<String>,
}

/// Loads `path`; the error says why it was skipped.
pub fn load(path: &Path) -> Result<LoadedLibrary, Refusal> {
    let mut sdk_version = None;
    load_inner(path, &mut sdk_version).map_err(|error| Refusal { error, sdk_version })
}

fn load_inner(path: &Path, sdk_version: &mut Option<String>) -> Result<LoadedLibrary, LoadError> {
    check_permissions(path).map_err(LoadError::Permissions)?;
    // SAFETY: loading runs the library's initialisers; that is inherent to plugins. Only files
    // named like Chiral plugins in the configured directories are loaded.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::NotLoadable(short(&e)))?;
    let version = {
        // SAFETY: the symbol's type is fixed by the SDK's export_plugin! macro.
        let sym = unsafe { lib.get::<extern "C" fn() -> *const c_char>(SDK_VERSION_SYMBOL) }
            .map_err(|_| LoadError::NoVersionSymbol)?;
        let ptr = sym();
        if ptr.is_null() {
            return Err(LoadError::NullVersion);
        }
        // SAFETY: the macro returns a pointer to a NUL-terminated static string.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    };
    *sdk_version = Some(version.clone());
    chiral_sdk::check_compatible(chiral_sdk::SDK_VERSION, &version)?;
    // Never unloaded: code and statics of the plugin may be referenced until exit.
    std::mem::forget(lib);

    let header = lib_header_from_path(path).map_err(|e| LoadError::Header(first_line(&e.to_string())))?;
    let module = init_root_module(header)?;
    let descriptor = (module.descriptor())().into_result().map_err(LoadError::Descriptor)?;
    if descriptor.name.is_empty() {
        return Err(LoadError::EmptyName);
    }
    Ok(LoadedLibrary { descriptor, module })
}

/// Checks the plugin's root module against ours and initialises it.
///
/// abi_stable accepts a library whose appendable types (the root module, trait vtables) have at
/// least the fields the host knows: a plugin as new as the host or newer. A plugin built
/// against an older SDK of the same series has the vtables as they were then, without the
/// methods appended since; for those the host's calls answer the defaults the SDK declares
/// (`docs/abi.md`). So when the usual check fails, the reverse one is tried: the host's types
/// must then extend the plugin's, field for field, which also means the one vtable the host
/// implements for the plugin (`EventSink`) has every method the plugin may call. Everything
/// that is not appendable (structs, enums, function signatures) must match exactly either way.
fn init_root_module(header: &abi_stable::library::LibHeader) -> Result<PluginModRef, LoadError> {
    use abi_stable::{
        abi_stability::abi_checking::{
            check_layout_compatibility, check_layout_compatibility_with_globals, CheckingGlobals,
        },
        StableAbi as _,
    };
    let theirs = header.layout().ok_or_else(|| LoadError::Layout("the plugin carries no layout to check".into()))?;
    let ours = PluginModRef::LAYOUT;
    if let Err(newer) = check_layout_compatibility(ours, theirs) {
        // Checked on its own: abi_stable's process-wide record of appendable types merges what
        // it sees, and recording the host's types as an extension of an old plugin's would make
        // it read later (current) plugins against the old vtables.
        if check_layout_compatibility_with_globals(theirs, ours, &CheckingGlobals::new()).is_err() {
            return Err(LoadError::Layout(layout_reason(&newer)));
        }
    }
    // SAFETY: the layout was checked just above, in one direction or the other.
    unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
        .map_err(|e| LoadError::RootModule(first_line(&e.to_string())))
}

/// One line out of abi_stable's pages-long report: where the first difference is (the path of
/// fields from the root module down) and what it is.
fn layout_reason(e: &abi_stable::abi_stability::abi_checking::AbiInstabilityErrors) -> String {
    use abi_stable::type_layout::TLFieldOrFunction;
    let Some(err) = e.errors.iter().find(|x| !x.errs.is_empty()) else {
        return "layouts differ".into();
    };
    let mut path: Vec<String> = Vec::new();
    for step in err.stack_trace.iter() {
        match &step.expected {
            TLFieldOrFunction::Field(f) => {
                let name = f.name();
                let noise = name == "0" || name == "obj" || name == "__returns" || name.starts_with("field_");
                if !noise {
                    path.push(name.to_string());
                }
            }
            TLFieldOrFunction::Function(_) => {}
        }
    }
    let last_type = err.stack_trace.last().map(|step| match &step.expected {
        TLFieldOrFunction::Field(f) => f.layout().name().to_string(),
        TLFieldOrFunction::Function(func) => func.name.to_string(),
    });
    // abi_stable renders each difference as "Error:<what>\nExpected:\n<x>\nFound:\n<y>".
    let text = err.to_string();
    let what = text
        .split_once("\nError:")
        .map(|(_, rest)| {
            let mut lines = rest.lines().map(str::trim).filter(|l| !l.is_empty());
            let kind = lines.next().unwrap_or("differs").to_string();
            let mut expected = None;
            let mut found = None;
            while let Some(l) = lines.next() {
                match l {
                    "Expected:" => expected = lines.next(),
                    "Found:" => found = lines.next(),
                    _ => {}
                }
                if found.is_some() {
                    break;
                }
            }
            match (expected, found) {
                (Some(x), Some(y)) => format!("{kind} (this host: {x}, the plugin: {y})"),
                _ => kind,
            }
        })
        .unwrap_or_else(|| "differs".into());
    let at = if path.is_empty() { "the root module".to_string() } else { path.join(".") };
    match last_type {
        Some(t) => format!("{at} ({t}): {what}"),
        None => format!("{at}: {what}"),
    }
}

/// A plugin runs as the user: refuse one that someone else could have put or changed there.
/// The file and its folder must belong to the user (or root) and not be writable by every user.
fn check_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let folder = real.parent().unwrap_or(Path::new("/"));
    for (what, p) in [("plugin file", real.as_path()), ("folder", folder)] {
        let m = std::fs::metadata(p).map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
        if m.uid() != me && m.uid() != 0 {
            return Err(format!(
                "refused: the {what} {} belongs to another user (uid {}), who could change what runs as you",
                p.display(),
                m.uid()
            ));
        }
        if m.mode() & 0o002 != 0 {
            return Err(format!(
                "refused: the {what} {} is writable by every user (mode {:o}): unsafe permissions",
                p.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn short(e: &libloading::Error) -> String {
    // dlerror text repeats the path; keep the reason after the last ": ".
    let s = e.to_string();
    let s = first_line(&s);
    s.rsplit(": ").next().unwrap_or(&s).to_string()
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string()
}
