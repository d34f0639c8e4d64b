//! The Python shim's end-to-end tests (clients/python/tests, pytest) against this build's
//! `fanin` binary, with real gunicorn and `multiprocessing` workers and the official Python
//! SDK. The test makes its own virtual environment under target/ (reused while
//! requirements-test.txt is unchanged) with `python3` from PATH; a missing `python3` fails
//! the test, it is never skipped.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("{what}: cannot start: {error}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// A virtual environment with the pinned test requirements and the shim, made once.
fn venv(client: &Path, target: &Path) -> PathBuf {
    let requirements = client.join("requirements-test.txt");
    let pinned = std::fs::read_to_string(&requirements).expect("requirements-test.txt");
    let venv = target.join("py-e2e-venv");
    let stamp = venv.join("fanin-requirements.txt");
    let python = venv.join("bin").join("python");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pinned.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
            "pip install the test requirements",
        );
        std::fs::write(&stamp, &pinned).expect("write the stamp");
    }
    // The shim itself, every time: it is the code under test.
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--force-reinstall",
            ])
            .arg(client),
        "pip install clients/python",
    );
    // The build backend must build out of tree: pip install leaves the sources alone.
    for artefact in [
        client.join("build"),
        client.join("src").join("fanin_shim.egg-info"),
    ] {
        assert!(
            !artefact.exists(),
            "{} exists: installing the shim must not write into the source tree",
            artefact.display()
        );
    }
    python
}

#[test]
fn python_shim_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client = root.join("clients").join("python");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let python = venv(&client, &target);
    run(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(&client)
            .env("FANIN_BIN", env!("CARGO_BIN_EXE_fanin"))
            .env("FANIN_NAIVE_VENVS", &target),
        "pytest clients/python/tests",
    );
}
