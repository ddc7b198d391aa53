//! The config checks only the running system can answer: do the interfaces exist. `xnlb
//! check` skips them (it may run on another machine); `run` and `reload` refuse such a config.

use std::path::Path;

use lb_model::config::{Config, ConfigError, Loaded, Locations, Mode, Problem, load};

/// `load`, plus the checks only the running system can answer (`run` and `reload`).
pub fn load_for_run(path: &Path) -> Result<Loaded, ConfigError> {
    let loaded = load(path)?;
    let mut problems = system_problems(&loaded.config);
    if problems.is_empty() {
        return Ok(loaded);
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = Locations::index(&text);
    for p in &mut problems {
        p.at = at.find(&p.path);
    }
    Err(ConfigError {
        file: path.display().to_string(),
        problems,
    })
}

/// Problems only the running system can show (interfaces that do not exist). `check` skips
/// these because it may run on another machine; `run` and `reload` refuse such a config.
pub fn system_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut check = |name: &str, path: &str| {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            problems.push(
                Problem::new(
                    path,
                    format!("interface `{name}` does not exist on this system"),
                )
                .hint("`ip link` lists the interfaces"),
            );
        }
    };
    check(&config.interfaces.client, "interfaces.client");
    if let (Mode::TwoArm, Some(server)) = (config.mode, &config.interfaces.server) {
        check(server, "interfaces.server");
    }
    problems
}
