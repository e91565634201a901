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

/// Loads `path`; the error is one line saying why it was skipped.
pub fn load(path: &Path) -> Result<LoadedLibrary, String> {
    check_permissions(path)?;
    // SAFETY: loading runs the library's initialisers; that is inherent to plugins. Only files
    // named like Chiral plugins in the configured directories are loaded.
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| format!("not a loadable library: {}", short(&e)))?;
    let version = {
        // SAFETY: the symbol's type is fixed by the SDK's export_plugin! macro.
        let sym = unsafe { lib.get::<extern "C" fn() -> *const c_char>(SDK_VERSION_SYMBOL) }
            .map_err(|_| "not a Chiral plugin (no chiral_plugin_sdk_version symbol)".to_string())?;
        let ptr = sym();
        if ptr.is_null() {
            return Err("not a Chiral plugin (null sdk version)".into());
        }
        // SAFETY: the macro returns a pointer to a NUL-terminated static string.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    };
    chiral_sdk::check_compatible(chiral_sdk::SDK_VERSION, &version)?;
    // Never unloaded: code and statics of the plugin may be referenced until exit.
    std::mem::forget(lib);

    let header = lib_header_from_path(path).map_err(|e| format!("abi_stable: {}", first_line(&e.to_string())))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| format!("incompatible plugin layout: {}", first_line(&e.to_string())))?;
    let descriptor = (module.descriptor())().into_result().map_err(|e| format!("descriptor failed: {e}"))?;
    if descriptor.name.is_empty() {
        return Err("descriptor has an empty name".into());
    }
    Ok(LoadedLibrary { descriptor, module })
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
