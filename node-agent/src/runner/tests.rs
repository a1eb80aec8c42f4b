use super::*;

#[test]
fn parses_the_line_protocol() {
    assert_eq!(
        parse_line("::progress:: 40 copying files"),
        Report::Progress {
            percent: 40,
            message: "copying files".into()
        }
    );
    assert_eq!(
        parse_line("::progress:: 100"),
        Report::Progress {
            percent: 100,
            message: String::new()
        }
    );
    assert_eq!(
        parse_line("::output:: version=3.0.7"),
        Report::Output {
            key: "version".into(),
            value: "3.0.7".into()
        }
    );
    assert_eq!(
        parse_line("::output:: products=biztalk,his"),
        Report::Output {
            key: "products".into(),
            value: "biztalk,his".into()
        }
    );
    // Malformed protocol lines are kept as log output, not lost.
    for line in [
        "::progress:: 140 too much",
        "::progress:: x",
        "::output:: novalue",
        "hello",
    ] {
        assert_eq!(parse_line(line), Report::Stdout(line.into()));
    }
}

fn sh(script: &str, timeout: Duration) -> CommandSpec {
    CommandSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        timeout,
        stdin_secret: None,
        outlives_agent: false,
        output_secret: false,
    }
}

/// The last line of a tool that ends without a line end is a line too, also when the program's
/// exit is noticed while that line is being read (100 runs, to meet that interleaving).
#[tokio::test]
async fn a_last_line_without_a_line_end_is_kept() {
    for _ in 0..100 {
        let (tx, mut rx) = mpsc::channel(64);
        let outcome = run(&sh("printf 'first\\nlast'", Duration::from_secs(20)), tx)
            .await
            .unwrap();
        assert_eq!(outcome.exit_code, Some(0));
        let mut lines = Vec::new();
        while let Ok(report) = rx.try_recv() {
            if let Report::Stdout(line) = report {
                lines.push(line);
            }
        }
        assert_eq!(lines, ["first", "last"]);
    }
}

#[tokio::test]
async fn runs_a_command_and_reports_in_order() {
    let (tx, mut rx) = mpsc::channel(64);
    let spec = sh(
        "echo '::progress:: 50 half'; echo '::output:: version=3.0.7'; echo plain; echo oops >&2; exit 3",
        Duration::from_secs(20),
    );
    let outcome = run(&spec, tx).await.unwrap();
    assert_eq!(outcome.exit_code, Some(3));
    assert!(!outcome.succeeded());
    assert_eq!(
        outcome.outputs.get("version").map(String::as_str),
        Some("3.0.7")
    );
    assert_eq!(outcome.stderr_tail, ["oops"]);
    assert_eq!(outcome.failure("facts"), "facts exited with code 3: oops");
    let mut stdout = Vec::new();
    while let Ok(report) = rx.try_recv() {
        if !matches!(report, Report::Stderr(_) | Report::Spawned { .. }) {
            stdout.push(report);
        }
    }
    assert_eq!(
        stdout,
        [
            Report::Progress {
                percent: 50,
                message: "half".into()
            },
            Report::Output {
                key: "version".into(),
                value: "3.0.7".into()
            },
            Report::Stdout("plain".into()),
        ]
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_stopped() {
    let (tx, _rx) = mpsc::channel(64);
    let outcome = run(&sh("sleep 30", Duration::from_millis(200)), tx)
        .await
        .unwrap();
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code, None);
    assert!(outcome.duration < Duration::from_secs(10));
    assert!(!outcome.succeeded());
    assert!(
        outcome
            .failure("install_sso")
            .starts_with("install_sso did not finish within")
    );
}

/// A cancelled step's program and the child it started are ended at once, and nothing further
/// of the step starts.
#[tokio::test]
async fn a_cancelled_command_is_ended_with_its_children() {
    let (tx, mut rx) = mpsc::channel(64);
    let token = CancellationToken::new();
    // Cancelled once the child's id is printed (a fixed delay is too short on a loaded machine).
    let cancel = token.clone();
    let child = tokio::spawn(async move {
        let mut child = None;
        while let Some(report) = rx.recv().await {
            if let Report::Stdout(line) = report {
                child = line.trim().parse::<u32>().ok();
                cancel.cancel();
            }
        }
        child
    });
    let outcome = CANCEL
        .scope(
            token.clone(),
            run(
                &sh("sleep 30 & echo $!; wait", Duration::from_secs(60)),
                tx.clone(),
            ),
        )
        .await
        .unwrap();
    assert!(!outcome.succeeded());
    assert!(!outcome.timed_out);
    assert!(outcome.duration < Duration::from_secs(10), "{outcome:?}");
    drop(tx);
    let child = child.await.unwrap().expect("the child's pid");
    // The kill is sent to the whole group; the child is gone once the kernel got to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while host::identify(child).is_some() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host::identify(child), None, "the child {child} was ended");
    let (tx, _rx) = mpsc::channel(64);
    let e = CANCEL
        .scope(token, run(&sh("true", Duration::from_secs(5)), tx))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/bin/sh was not started: the step was cancelled"
    );
}

#[tokio::test]
async fn a_grandchild_holding_the_output_open_neither_loses_it_nor_holds_the_step() {
    let (tx, _rx) = mpsc::channel(64);
    // The background sleep keeps stdout open long after the shell exits; what the shell wrote
    // before it exits is read, and the step ends one grace period later, not at the sleep's end.
    let outcome = run(
        &sh(
            "echo '::output:: version=3.0.7'; sleep 30 & echo '::output:: service=running'; exit 0",
            Duration::from_secs(60),
        ),
        tx,
    )
    .await
    .unwrap();
    assert!(outcome.succeeded());
    assert_eq!(
        outcome.outputs.get("version").map(String::as_str),
        Some("3.0.7")
    );
    assert_eq!(
        outcome.outputs.get("service").map(String::as_str),
        Some("running")
    );
    assert!(
        outcome.duration < Duration::from_secs(20),
        "{:?}",
        outcome.duration
    );
}

/// Many programs at once on a few threads: every line each wrote before it exited is read, even
/// when the runtime gets to a runner long after the exit (the output used to be given up on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_runtime_loses_no_output() {
    let runs: Vec<_> = (0..4000)
        .map(|i| {
            tokio::spawn(async move {
                let (tx, mut rx) = mpsc::channel(64);
                tokio::spawn(async move { while rx.recv().await.is_some() {} });
                let script = format!("echo '::output:: version=3.0.{i}'; echo done");
                (i, run(&sh(&script, Duration::from_secs(300)), tx).await)
            })
        })
        .collect();
    let mut lost = Vec::new();
    for run in runs {
        let (i, outcome) = run.await.unwrap();
        let outcome = outcome.unwrap();
        assert!(outcome.succeeded());
        if outcome.outputs.get("version") != Some(&format!("3.0.{i}")) {
            lost.push(i);
        }
    }
    assert!(
        lost.is_empty(),
        "output lost by {} of 4000 runs: {lost:?}",
        lost.len()
    );
}

/// Runs `spec` as a step's program would run: its output in files in `dir`.
async fn in_step(dir: &std::path::Path, spec: &CommandSpec) -> (Outcome, Vec<Report>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let outcome = OUTPUT_DIR
        .scope(dir.to_path_buf(), run(spec, tx))
        .await
        .unwrap();
    let mut reports = Vec::new();
    while let Ok(report) = rx.try_recv() {
        reports.push(report);
    }
    (outcome, reports)
}

fn lines_of(reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .filter_map(|r| match r {
            Report::Stdout(line) | Report::Stderr(line) => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// A step's program writes into files, which the agent follows: the same reports as from pipes, a
/// last line without a line end included, and the files stay.
#[tokio::test]
async fn a_steps_program_writes_into_files_that_the_agent_follows() {
    let dir = tempfile::tempdir().unwrap();
    for outlives_agent in [false, true] {
        let mut spec = sh(
            "echo '::progress:: 50 half'; sleep 0.3; echo '::output:: version=3.0.7'; echo oops >&2; printf last; exit 3",
            Duration::from_secs(20),
        );
        spec.outlives_agent = outlives_agent;
        let (outcome, reports) = in_step(dir.path(), &spec).await;
        assert_eq!(outcome.exit_code, Some(3), "{outlives_agent}");
        assert_eq!(outcome.outputs["version"], "3.0.7");
        assert_eq!(outcome.stderr_tail, ["oops"]);
        assert!(reports.contains(&Report::Progress {
            percent: 50,
            message: "half".into()
        }));
        // Standard output and error are two files: their lines' order between them is not kept.
        let mut lines = lines_of(&reports);
        lines.sort();
        assert_eq!(lines, ["last", "oops"]);
    }
    let second = dir.path().join("2.out");
    assert!(
        std::fs::read_to_string(&second).unwrap().ends_with("last"),
        "the output stays in {}",
        second.display()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("2.exit")).unwrap(),
        "code 3\n",
        "the host recorded the exit"
    );
    assert!(
        !dir.path().join("1.exit").exists(),
        "only a hosted program has one"
    );
}

/// A line over the cap is reported cut, with its length and the file that holds all of it.
#[tokio::test]
async fn a_line_over_the_cap_is_cut_and_its_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sh(
        "head -c 5242880 /dev/zero | tr '\\0' o; echo; echo after; head -c 100000 /dev/zero | tr '\\0' e >&2",
        Duration::from_secs(20),
    );
    let (outcome, reports) = in_step(dir.path(), &spec).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    // Standard output's lines, then standard error's (their order between them is not kept).
    let mut lines = lines_of(&reports);
    lines.sort_by_key(|line| line.starts_with('e'));
    assert_eq!(
        lines.len(),
        3,
        "{:?}",
        lines.iter().map(String::len).collect::<Vec<_>>()
    );
    let out = dir.path().join("1.out");
    assert!(lines[0].starts_with(&"o".repeat(crate::limits::LINE_MAX)));
    assert!(
        lines[0].ends_with(&format!(
            "o… truncated, 5242880 bytes (full output: {})",
            out.display()
        )),
        "{}",
        &lines[0][crate::limits::LINE_MAX - 10..]
    );
    assert_eq!(lines[1], "after");
    assert!(lines[2].contains("… truncated, 100000 bytes (full output: "));
    assert!(outcome.stderr_tail[0].len() < 2 * crate::limits::TAIL_LINE_MAX);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 5242880 + 7);
}

/// A tool whose output is secret is read from a pipe: nothing of it reaches a file.
#[tokio::test]
async fn secret_output_never_reaches_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("echo key-material", Duration::from_secs(20));
    spec.output_secret = true;
    let (_, reports) = in_step(dir.path(), &spec).await;
    assert_eq!(lines_of(&reports), ["key-material"]);
    assert!(!dir.path().exists() || std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// An agent that is killed or stopped leaves its step's program running (the next start follows it):
/// the program writes into files, not into a pipe nobody reads any more, so it runs on to its end,
/// and its host records how it ended and how far its output was read.
#[tokio::test]
async fn a_program_outlives_the_agent_that_reads_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let script = format!(
        "echo early; sleep 0.5; echo late; echo later >&2; touch '{}'; exit 7",
        done.display()
    );
    let (tx, mut rx) = mpsc::channel(64);
    // The runner is dropped (the agent is gone) while the program runs.
    let mut spec = sh(&script, Duration::from_secs(60));
    spec.outlives_agent = true;
    let steps = dir.path().join("steps");
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        OUTPUT_DIR.scope(steps.clone(), run(&spec, tx)),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let program = files::Program::last_hosted(&steps).unwrap();
    while program.read_exit().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done.exists(), "the program died with the agent");
    assert_eq!(program.read_exit(), Some(files::Exit::Code(7)));
    // "early" was read before the agent went; nobody journaled it, so its position was not written.
    let mut read_to = Vec::new();
    while let Ok(report) = rx.try_recv() {
        if let Report::ReadTo { at, .. } = report {
            read_to.push(at);
        }
    }
    assert_eq!(read_to, [(6, 0)], "reported once, when it moved");
    assert_eq!(program.read_pos(), (0, 0));
    assert_eq!(
        std::fs::read_to_string(program.out()).unwrap(),
        "early\nlate\n"
    );
}

#[tokio::test]
async fn the_secret_goes_to_stdin_only() {
    let (tx, _rx) = mpsc::channel(64);
    let mut spec = sh(
        "read pw; echo \"::output:: got=$pw\"",
        Duration::from_secs(20),
    );
    spec.stdin_secret = Some("s3cret".into());
    assert!(!spec.display().contains("s3cret"));
    let outcome = run(&spec, tx).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(
        outcome.outputs.get("got").map(String::as_str),
        Some("[redacted]"),
        "it got the secret, and what it prints of it is redacted"
    );
}

/// A program with a secret on its standard input writes no file, hosted or not: what it prints of
/// the secret is redacted before anything sees it.
#[tokio::test]
async fn a_program_given_a_secret_writes_no_file_and_its_echo_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    for outlives_agent in [false, true] {
        let mut spec = sh(
            "read pw; echo \"pw is $pw\"; echo \"bad $pw\" >&2; exit 4",
            Duration::from_secs(20),
        );
        spec.stdin_secret = Some("s3cret".into());
        spec.outlives_agent = outlives_agent;
        let (outcome, reports) = in_step(dir.path(), &spec).await;
        assert_eq!(outcome.exit_code, Some(4), "{outlives_agent}");
        assert_eq!(outcome.stderr_tail, ["bad [redacted]"]);
        // (The tests' step host, this test binary, prints a line of its own before the program's.)
        let lines = lines_of(&reports);
        assert!(
            lines.iter().any(|l| l.ends_with("pw is [redacted]")),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains("s3cret")), "{lines:?}");
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "{}: {text}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("1.exit")).unwrap(),
        "code 4\n",
        "only the hosted one has files, and its exit is recorded"
    );
    assert!(!dir.path().join("2.out").exists());
}

/// How far a hosted program's output was read is reported after its lines, only when it moved,
/// and never written by the runner (the attempt's task writes it once the lines are journaled).
#[tokio::test]
async fn a_hosted_programs_position_follows_its_lines_and_only_when_it_moved() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("echo one; sleep 1; echo two >&2", Duration::from_secs(20));
    spec.outlives_agent = true;
    let (_, reports) = in_step(dir.path(), &spec).await;
    let order: Vec<String> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Stdout(line) | Report::Stderr(line) => Some(line.clone()),
            Report::ReadTo { at, .. } => Some(format!("{at:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["one", "(4, 0)", "two", "(4, 4)"]);
    let program = files::Program::last_hosted(dir.path()).unwrap();
    assert_eq!(program.read_pos(), (0, 0));
}

/// However many distinct outputs a program prints, what the agent keeps of them stays within what a
/// result carries.
#[tokio::test]
async fn outputs_are_kept_within_their_cap() {
    let (tx, _rx) = mpsc::channel(100_000);
    let spec = sh(
        "i=0; while [ $i -lt 20000 ]; do echo \"::output:: key$i=$(printf '%080d' $i)\"; i=$((i+1)); done; echo '::output:: key0=last'",
        Duration::from_secs(60),
    );
    let outcome = run(&spec, tx).await.unwrap();
    let len: usize = outcome.outputs.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(len < crate::limits::OUTPUTS_MAX + 200, "{len}");
    assert_eq!(
        outcome.outputs["key0"], "last",
        "a kept key takes its new value"
    );
    assert!(outcome.outputs["outputs_truncated"].starts_with("19"));
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let (tx, _rx) = mpsc::channel(1);
    let mut spec = sh("", Duration::from_secs(1));
    spec.program = "/nonexistent/ssoconfig".into();
    let e = run(&spec, tx).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot start /nonexistent/ssoconfig"),
        "{e}"
    );
}
