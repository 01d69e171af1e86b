//! `lbctl logs`: the log files a provider names (access logs, groups'
//! events, instances' output), one source or all of them interleaved by
//! time, optionally from `--since` ago and followed as they grow (`-f`).
//!
//! Interleaved, each line is shown after its source (`[web] ...`); one
//! source's lines are shown as written, so that an access log's go to the
//! tools that read AWS's as they are. A line of a process's output that
//! does not start with its time takes the time of the file's previous line
//! that has one (at the file's start, the file's creation time); followed,
//! the time it was read at, which is when it was written, give or take
//! `FOLLOW_EVERY`.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use lbctl_plan::{LogFile, LogKind};

/// One line and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When.
    pub time: SystemTime,
    /// `[source] text`, or the text alone (one source).
    pub text: String,
}

/// The time a line says it was written at, by the kind of its file.
fn time_of(kind: LogKind, line: &str) -> Option<SystemTime> {
    let field = match kind {
        // An ALB line's time is its second field; an NLB line's its third,
        // after the format version (`tcp 2.0 <time> ...`).
        LogKind::Access => {
            let mut fields = line.split(' ').skip(1);
            match fields.next()? {
                "2.0" => fields.next()?,
                time => time,
            }
        }
        // An instance's output: a time first, when its program writes one
        // (`lbctl worker` does; so do many loggers).
        LogKind::Events | LogKind::Output => line.split(' ').next()?,
    };
    humantime::parse_rfc3339_weak(field.trim_end_matches('Z')).ok()
}

/// The files `name` names: its own (a load balancer's, group's or
/// instance's), or every one when `name` is `None`.
pub fn select(files: Vec<LogFile>, name: Option<&str>) -> Result<Vec<LogFile>> {
    let Some(name) = name else { return Ok(files) };
    let chosen: Vec<LogFile> = files.iter().filter(|it| it.source == name).cloned().collect();
    if chosen.is_empty() {
        let mut known: Vec<&str> = files.iter().map(|it| it.source.as_str()).collect();
        known.dedup();
        if known.is_empty() {
            bail!("no logs: nothing of the stack writes one (set `access_logs: true` on a load balancer for its access log)");
        }
        bail!(
            "no logs of `{name}`{}; logs exist of: {}",
            lbctl_spec::did_you_mean(name, known.iter().copied()),
            known.join(", ")
        );
    }
    Ok(chosen)
}

/// Where a followed file has been read to.
pub struct Reader {
    file: LogFile,
    offset: u64,
    /// The time of the last line that had one.
    last_time: SystemTime,
    /// The start of a line not ended yet.
    partial: String,
    /// Lines are shown after their source.
    labelled: bool,
    /// Read once already: what comes now was written since.
    read: bool,
}

impl Reader {
    /// A reader of `file` from its start; `labelled`: its lines shown
    /// after their source.
    pub fn new(file: LogFile, labelled: bool) -> Reader {
        let born = std::fs::metadata(&file.path)
            .and_then(|it| it.created().or_else(|_| it.modified()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Reader { file, offset: 0, last_time: born, partial: String::new(), labelled, read: false }
    }

    /// The file's complete lines since the last call.
    pub fn read_new(&mut self) -> Vec<Line> {
        let Ok(mut handle) = std::fs::File::open(&self.file.path) else { return Vec::new() };
        let length = handle.metadata().map(|it| it.len()).unwrap_or(0);
        if length < self.offset {
            self.offset = 0; // truncated or replaced: read it again
        }
        if handle.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let _ = handle.read_to_end(&mut bytes);
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines = Vec::new();
        // Untimed lines that are new since the last read were written since it.
        let now = self.read.then(SystemTime::now);
        self.read = true;
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            match (time_of(self.file.kind, line), now) {
                (Some(time), _) => self.last_time = time,
                (None, Some(now)) => self.last_time = self.last_time.max(now),
                (None, None) => {}
            }
            let text = if self.labelled { format!("[{}] {line}", self.file.source) } else { line.to_string() };
            lines.push(Line { time: self.last_time, text });
        }
        lines
    }

    /// The file read.
    pub fn path(&self) -> &PathBuf {
        &self.file.path
    }
}

/// Every line of `readers` from `since` on, in time order (a stable sort:
/// lines of the same time keep their files' order).
pub fn gather(readers: &mut [Reader], since: Option<SystemTime>) -> Vec<Line> {
    let mut lines: Vec<Line> = readers.iter_mut().flat_map(Reader::read_new).collect();
    if let Some(since) = since {
        lines.retain(|it| it.time >= since);
    }
    lines.sort_by_key(|it| it.time);
    lines
}

/// Readers for the files of `files` not read yet (a new instance's log,
/// when following), keyed by path; `labelled`: their lines shown after
/// their source.
pub fn add_new(readers: &mut BTreeMap<PathBuf, Reader>, files: Vec<LogFile>, labelled: bool) {
    for file in files {
        readers.entry(file.path.clone()).or_insert_with(|| Reader::new(file, labelled));
    }
}

/// How often followed files are looked at.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_interleaved_by_time_and_untimed_lines_follow_their_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let access = dir.path().join("access.log");
        let events = dir.path().join("events.log");
        let output = dir.path().join("i-1.log");
        std::fs::write(
            &access,
            "http 2026-12-02T10:00:02.000000Z app/public/00 127.0.0.1:1 - -1 -1 -1 200 - 1 1 \"GET / HTTP/1.1\"\n",
        )
        .unwrap();
        std::fs::write(&events, "2026-12-02T10:00:01Z launched i-1\n2026-12-02T10:00:03Z i-1 unhealthy\npartial")
            .unwrap();
        std::fs::write(&output, "worker i-1 listening\n").unwrap();
        let file =
            |source: &str, kind, path: &PathBuf| LogFile { source: source.to_string(), kind, path: path.clone() };
        let mut readers = vec![
            Reader::new(file("public", LogKind::Access, &access), true),
            Reader::new(file("web", LogKind::Events, &events), true),
        ];
        let lines = gather(&mut readers, None);
        let sources: Vec<&str> = lines.iter().map(|it| it.text.split(' ').next().unwrap()).collect();
        assert_eq!(sources, ["[web]", "[public]", "[web]"], "{lines:#?}");
        assert!(lines[2].text.ends_with("i-1 unhealthy"));

        // The unfinished line comes once it ends; since filters.
        std::fs::write(
            &events,
            "2026-12-02T10:00:01Z launched i-1\n2026-12-02T10:00:03Z i-1 unhealthy\npartial line\n",
        )
        .unwrap();
        let more = gather(&mut readers, None);
        assert_eq!(more.iter().map(|it| it.text.as_str()).collect::<Vec<_>>(), ["[web] partial line"]);
        let since = humantime::parse_rfc3339("2026-12-02T10:00:02Z").unwrap();
        let mut fresh = vec![Reader::new(file("web", LogKind::Events, &events), true)];
        assert_eq!(gather(&mut fresh, Some(since)).len(), 2, "the 10:00:03 line and the one after it");

        let network = dir.path().join("edge.log");
        std::fs::write(&network, "tcp 2.0 2026-12-02T10:00:05 net/edge/00 0123456789abcdef\n").unwrap();
        let mut network_reader = vec![Reader::new(file("edge", LogKind::Access, &network), true)];
        assert_eq!(
            gather(&mut network_reader, Some(since))[0].time,
            humantime::parse_rfc3339("2026-12-02T10:00:05Z").unwrap()
        );

        let mut output_reader = vec![Reader::new(file("i-1", LogKind::Output, &output), true)];
        assert_eq!(gather(&mut output_reader, None)[0].text, "[i-1] worker i-1 listening");
        let mut alone = vec![Reader::new(file("i-1", LogKind::Output, &output), false)];
        assert_eq!(gather(&mut alone, None)[0].text, "worker i-1 listening");

        // Output that starts with its time is placed by it; followed,
        // untimed output is placed when it was read, not at an older line.
        let timed = dir.path().join("i-2.log");
        std::fs::write(&timed, "2026-12-02T10:00:04.000Z worker i-2: health checks now answer 503\n").unwrap();
        let mut timed_reader = Reader::new(file("i-2", LogKind::Output, &timed), true);
        let first = timed_reader.read_new();
        assert_eq!(first[0].time, humantime::parse_rfc3339("2026-12-02T10:00:04Z").unwrap());
        std::fs::write(&timed, "2026-12-02T10:00:04.000Z worker i-2: health checks now answer 503\nuntimed\n").unwrap();
        let before = SystemTime::now();
        let later = timed_reader.read_new();
        assert_eq!(later[0].text, "[i-2] untimed");
        assert!(later[0].time >= before, "{later:?}");
    }

    #[test]
    fn a_name_picks_its_files_or_says_which_exist() {
        let files = vec![
            LogFile { source: "web".into(), kind: LogKind::Events, path: "/x/events.log".into() },
            LogFile { source: "i-1".into(), kind: LogKind::Output, path: "/x/i-1.log".into() },
        ];
        assert_eq!(select(files.clone(), Some("web")).unwrap().len(), 1);
        assert_eq!(select(files.clone(), None).unwrap().len(), 2);
        let err = select(files, Some("wbe")).unwrap_err().to_string();
        assert!(err.contains("did you mean `web`?") && err.contains("web, i-1"), "{err}");
    }
}
