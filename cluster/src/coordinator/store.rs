//! The coordinator's job store: what survives a coordinator restart (Flink's HA job graph
//! store and checkpoint id counter, in a simple form), under the coordinator's
//! `--checkpoint-dir` as `DIR/jobs/`:
//!
//! - `counters`: the next job number and the next run id. The run id is written before a run
//!   is deployed, so a restarted coordinator never reuses one: a message of a run of its
//!   predecessor is stale to it, like a message of any run that is over.
//! - `<job id>.job`: a job the coordinator accepted — its name, options and workers wanted,
//!   the runs it was deployed as, its restarts, the newest checkpoint whose completion the
//!   coordinator may have announced (written before the `Complete` goes out, so the nodes
//!   never published output past it), the checkpoint ids reserved (ids are reserved in
//!   blocks before triggers go out, so a new run never reuses an id an old one may still be
//!   writing), and how it ended, once it has.
//!
//! Every file is written atomically (temporary file, fsync, rename, directory fsync). The
//! files are text, `key value` lines (values escaped: `\\`, `\n`), one line per option.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The store's directory under the coordinator's checkpoint directory.
pub(crate) const JOBS_DIR: &str = "jobs";
const FORMAT: &str = "sluice-job 1";

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    pub(crate) workers_wanted: Option<u32>,
    /// The runs it was deployed as, oldest first.
    pub(crate) runs: Vec<u64>,
    pub(crate) restarts: u32,
    /// Workers of its latest run.
    pub(crate) workers_last: u32,
    /// The newest checkpoint the coordinator may have told the nodes is complete (0: none).
    pub(crate) checkpoint: u64,
    /// Checkpoint ids up to this one may have been triggered.
    pub(crate) reserved: u64,
    /// How it ended: `finished`, `cancelled` or `failed`, and the message; `None` while it
    /// has not.
    pub(crate) end: Option<(String, String)>,
}

/// The store: `DIR/jobs`.
pub(crate) struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    /// The store under checkpoint directory `root` (created if missing).
    pub(crate) fn open(root: &Path) -> Result<JobStore, String> {
        let dir = root.join(JOBS_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("create the job store {}: {e}", dir.display()))?;
        Ok(JobStore { dir })
    }

    /// The counters (next job number, next run id) and every job, by id.
    pub(crate) fn load(&self) -> Result<((u64, u64), Vec<JobRecord>), String> {
        let counters = match std::fs::read_to_string(self.dir.join("counters")) {
            Ok(text) => parse_counters(&text)
                .ok_or_else(|| format!("{}: malformed", self.dir.join("counters").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, 1),
            Err(e) => return Err(format!("read {}: {e}", self.dir.display())),
        };
        let mut jobs = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("list the job store {}: {e}", self.dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("job") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            let record =
                parse(&text).map_err(|why| format!("job store file {}: {why}", path.display()))?;
            jobs.push(record);
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((counters, jobs))
    }

    /// Writes the counters.
    pub(crate) fn save_counters(&self, next_job: u64, next_run: u64) -> Result<(), String> {
        let text = format!("next_job {next_job}\nnext_run {next_run}\n");
        write_atomically(&self.dir, "counters", &text)
    }

    /// Writes job `r`.
    pub(crate) fn save(&self, r: &JobRecord) -> Result<(), String> {
        write_atomically(&self.dir, &format!("{}.job", r.id), &render(r))
    }
}

fn parse_counters(text: &str) -> Option<(u64, u64)> {
    let mut job = None;
    let mut run = None;
    for line in text.lines() {
        match line.split_once(' ')? {
            ("next_job", n) => job = n.parse().ok(),
            ("next_run", n) => run = n.parse().ok(),
            _ => return None,
        }
    }
    Some((job?, run?))
}

/// Temporary file, fsync, rename over `name`, directory fsync.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let failed = |op: &str, path: &Path, e: std::io::Error| {
        format!("job store: {op} {}: {e}", path.display())
    };
    let mut f = File::create(&tmp).map_err(|e| failed("create", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| failed("write", &tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| failed("rename", &target, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("sync", dir, e))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("a bad escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

fn render(r: &JobRecord) -> String {
    let mut t = format!("{FORMAT}\nid {}\nname {}\n", escape(&r.id), escape(&r.name));
    if let Some(w) = r.workers_wanted {
        t.push_str(&format!("workers_wanted {w}\n"));
    }
    for run in &r.runs {
        t.push_str(&format!("run {run}\n"));
    }
    t.push_str(&format!(
        "restarts {}\nworkers_last {}\ncheckpoint {}\nreserved {}\n",
        r.restarts, r.workers_last, r.checkpoint, r.reserved
    ));
    for a in &r.args {
        t.push_str(&format!("arg {}\n", escape(a)));
    }
    if let Some((state, message)) = &r.end {
        t.push_str(&format!("end {}\nmessage {}\n", state, escape(message)));
    }
    t
}

fn parse(text: &str) -> Result<JobRecord, String> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT) {
        return Err(format!("not a job record of format '{FORMAT}'"));
    }
    let mut r = JobRecord {
        id: String::new(),
        name: String::new(),
        args: Vec::new(),
        workers_wanted: None,
        runs: Vec::new(),
        restarts: 0,
        workers_last: 0,
        checkpoint: 0,
        reserved: 0,
        end: None,
    };
    let mut end_state = None;
    let mut message = String::new();
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("'{key}' is not a number: {v:?}"))
        };
        let small = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("'{key}' is not a number: {v:?}"))
        };
        match key {
            "id" => r.id = unescape(value)?,
            "name" => r.name = unescape(value)?,
            "workers_wanted" => r.workers_wanted = Some(small(value)?),
            "run" => r.runs.push(number(value)?),
            "restarts" => r.restarts = small(value)?,
            "workers_last" => r.workers_last = small(value)?,
            "checkpoint" => r.checkpoint = number(value)?,
            "reserved" => r.reserved = number(value)?,
            "arg" => r.args.push(unescape(value)?),
            "end" => end_state = Some(value.to_owned()),
            "message" => message = unescape(value)?,
            other => return Err(format!("an unknown line '{other}'")),
        }
    }
    let valid_id = r.id.starts_with("job-") && r.id[4..].chars().all(|c| c.is_ascii_digit());
    if !valid_id || r.name.is_empty() {
        return Err("no job id or name".into());
    }
    r.end = end_state.map(|s| (s, message));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord {
            id: "job-0007".into(),
            name: "running-count".into(),
            args: vec!["--output".into(), "/a b\\c\nd".into(), String::new()],
            workers_wanted: Some(3),
            runs: vec![4, 9],
            restarts: 1,
            workers_last: 3,
            checkpoint: 12,
            reserved: 76,
            end: None,
        }
    }

    #[test]
    fn records_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), ((1, 1), Vec::new()));
        let mut r = record();
        store.save(&r).unwrap();
        store.save_counters(8, 10).unwrap();
        assert_eq!(store.load().unwrap(), ((8, 10), vec![r.clone()]));
        r.end = Some(("failed".into(), "it broke\nbadly".into()));
        r.workers_wanted = None;
        store.save(&r).unwrap();
        assert_eq!(store.load().unwrap().1, vec![r]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(JOBS_DIR))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let text = render(&record());
        assert_eq!(parse(&text).unwrap(), record());
        for cut in 0..text.len() {
            let _ = parse(&text[..cut]);
        }
        assert!(parse("sluice-job 1\nid job-1\nname x\nrun nine\n").is_err());
        assert!(parse("sluice-job 1\nid job-1\nname x\narg a\\q\n").is_err());
        assert!(parse("sluice-job 2\nid job-1\nname x\n").is_err());
        assert!(parse("sluice-job 1\nname x\n").is_err());
    }
}
