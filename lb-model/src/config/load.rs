//! Reading a config: YAML, then types (every type error, each with its path), then validation,
//! each problem placed at its `file:line:col` with a hint where one helps.

use std::{fmt, path::Path};

use serde::de::DeserializeOwned;

use super::{Backend, Config, Health, PortRange, Service, locate::Locations, validate};

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, e.g. `services[0].backends[1].weight`; empty for the whole file.
    pub path: String,
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            at: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem of one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            match p.at {
                Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.file)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            writeln!(f, "{}", p.message)?;
            if let Some(hint) = &p.hint {
                writeln!(f, "    hint: {hint}")?;
            }
        }
        Ok(())
    }
}

/// A config that passed every check, with what is allowed but worth saying.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads and checks `path`. Does not look at the system (`xnlb::host::interfaces` does).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
    })?;
    parse(&text, &file)
}

/// Parses and checks a config held in memory; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    let fail = |problems| ConfigError {
        file: file.to_string(),
        problems,
    };
    let doc: serde_norway::Value = match serde_norway::from_str(text) {
        Ok(serde_norway::Value::Null) => {
            return Err(fail(vec![
                Problem::new("", "the file is empty").hint("start from the example in the README"),
            ]));
        }
        Ok(mut doc) => {
            // YAML merge keys (`<<: *anchor`): one health check or backend list written once
            // and varied per service, as administrators write YAML elsewhere.
            if let Err(e) = doc.apply_merge() {
                return Err(fail(vec![Problem::new("", format!("not valid YAML: {e}"))]));
            }
            doc
        }
        Err(e)
            if [" as u128", " as i128"]
                .iter()
                .any(|t| e.to_string().contains(t)) =>
        {
            // serde_norway reads integers past 64 bits this way; say it plainly.
            let mut p = Problem::new("", "a number too large for any setting")
                .hint("ports, weights and sizes are small numbers; durations take units (2s)");
            p.at = e.location().map(|l| (l.line(), l.column()));
            return Err(fail(vec![p]));
        }
        Err(e) => {
            let mut p = Problem::new("", format!("not valid YAML: {e}"));
            p.at = e.location().map(|l| (l.line(), l.column()));
            return Err(fail(vec![p]));
        }
    };
    let at = Locations::index(text);
    let mut problems = Vec::new();
    let config = typed(&doc, &mut problems);
    if let Some(config) = &config {
        problems.extend(validate::problems(config));
    }
    for p in &mut problems {
        if p.at.is_none() {
            p.at = at.find(&p.path);
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(Loaded {
            warnings: validate::warnings(&config),
            config,
        }),
        _ => Err(fail(problems)),
    }
}

/// The typed config, or `None` with every type error found: the top level, then each service
/// on its own so that a mistake in one does not hide mistakes in the next.
fn typed(doc: &serde_norway::Value, problems: &mut Vec<Problem>) -> Option<Config> {
    if let Ok(config) = deserialize::<Config>(doc, "", problems) {
        return Some(config);
    }
    problems.clear();
    let mut top = doc.clone();
    let services = match &mut top {
        serde_norway::Value::Mapping(m) => {
            m.insert("services".into(), serde_norway::Value::Sequence(vec![]))
        }
        _ => None,
    };
    let _ = deserialize::<Config>(&top, "", problems);
    if let Some(serde_norway::Value::Sequence(services)) = services {
        for (i, service) in services.iter().enumerate() {
            let path = format!("services[{i}]");
            match serde_norway::from_value::<Service>(service.clone()) {
                Ok(service) => problems.extend(validate::service_problems(&service, &path)),
                Err(_) => service_type_errors(service, &path, problems),
            }
        }
    }
    None
}

/// Every type error of a service that does not parse: its own keys, each port, each backend
/// and its health block on their own, so that one mistake does not hide the next.
fn service_type_errors(service: &serde_norway::Value, path: &str, problems: &mut Vec<Problem>) {
    let serde_norway::Value::Mapping(keys) = service else {
        let _ = deserialize::<Service>(service, path, problems);
        return;
    };
    let mut own = keys.clone();
    let empty = || serde_norway::Value::Sequence(vec![]);
    let ports = own.insert("ports".into(), empty());
    let backends = own.insert("backends".into(), empty());
    let health = own.remove("health");
    every_error::<Service>(serde_norway::Value::Mapping(own), path, problems);
    let each = |list: Option<serde_norway::Value>| match list {
        Some(serde_norway::Value::Sequence(items)) => items,
        _ => Vec::new(),
    };
    for (i, port) in each(ports).iter().enumerate() {
        let _ = deserialize::<PortRange>(port, &format!("{path}.ports[{i}]"), problems);
    }
    for (i, backend) in each(backends).into_iter().enumerate() {
        every_error::<Backend>(backend, &format!("{path}.backends[{i}]"), problems);
    }
    if let Some(health) = health {
        every_error::<Health>(health, &format!("{path}.health"), problems);
    }
}

/// Every type error of one block: after each, the key at fault is set aside and the block read
/// again (a key with a default then reads as its default; a required one set aside comes back
/// as "missing", which is not said again).
fn every_error<T: DeserializeOwned>(
    mut value: serde_norway::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    let mut set_aside = Vec::new();
    for _ in 0..32 {
        let Err(e) = read::<T>(&value, path) else {
            return;
        };
        if e.missing
            .as_ref()
            .is_some_and(|key| set_aside.contains(key))
        {
            return;
        }
        problems.push(e.problem);
        match e.keys.last() {
            Some(key) if remove_key(&mut value, &e.keys) => set_aside.push(key.clone()),
            _ => return,
        }
    }
}

/// Removes the mapping key at `keys` (a path of keys only); false when there is none.
fn remove_key(value: &mut serde_norway::Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut at = value;
    for key in parents {
        match at.get_mut(key.as_str()) {
            Some(next) if !key.is_empty() => at = next,
            _ => return false,
        }
    }
    match at {
        serde_norway::Value::Mapping(m) if !last.is_empty() => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// `T` from `value`, or where and why it is not one.
fn deserialize<T: DeserializeOwned>(
    value: &serde_norway::Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Result<T, ()> {
    read(value, prefix).map_err(|e| problems.push(e.problem))
}

/// A type error: the problem to say, the keys leading to it (empty where a segment is not a
/// key), and the field it says is missing, if that is the error.
struct TypeError {
    problem: Problem,
    keys: Vec<String>,
    missing: Option<String>,
}

fn read<T: DeserializeOwned>(
    value: &serde_norway::Value,
    prefix: &str,
) -> Result<T, Box<TypeError>> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_string(),
            ("", i) => i.to_string(),
            (p, i) if i.starts_with('[') => format!("{p}{i}"),
            (p, i) => format!("{p}.{i}"),
        };
        let keys = e
            .path()
            .iter()
            .map(|s| match s {
                serde_path_to_error::Segment::Map { key } => key.clone(),
                _ => String::new(),
            })
            .collect();
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_string());
        let mut problem = Problem::new(path, message);
        problem.hint = did_you_mean(&problem.message);
        Box::new(TypeError {
            problem,
            keys,
            missing,
        })
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and variants): the closest
/// expected word, when it is close.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (wrong, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|w| (strsim::levenshtein(wrong, w), w))
        .min()?;
    (best.0 <= 2 || best.0 * 3 <= wrong.len()).then(|| format!("did you mean `{}`?", best.1))
}
