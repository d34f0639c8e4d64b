//! The Python shim's end-to-end tests (clients/python/tests, pytest) against this build's
//! `fanin` binary, with real gunicorn, uWSGI, Celery and `multiprocessing` workers and the
//! official Python SDK. Two runs: the whole suite on the newest tested SDK
//! (requirements-test.txt), and a representative subset on the oldest supported one
//! (requirements-oldest.txt, the lower bounds in pyproject.toml). Each run makes its own
//! virtual environment under target/ (reused while its requirements file is unchanged) with
//! `python3` from PATH; a missing `python3` fails the test, it is never skipped.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the oldest SDK runs: setup and every instrument kind, and gunicorn workers through
/// the README's two lines over HTTP, the setup that once failed every request.
const OLDEST_SDK_SUBSET: &[&str] = &[
    "tests/test_setup.py",
    "tests/test_instruments.py",
    "tests/test_gunicorn.py::test_shim_workers_add_up_exactly[http]",
];

#[test]
fn python_shim_end_to_end() {
    pytest("requirements-test.txt", "py-e2e-venv", &["tests"]);
}

#[test]
fn python_shim_on_the_oldest_supported_sdk() {
    pytest(
        "requirements-oldest.txt",
        "py-e2e-venv-oldest",
        OLDEST_SDK_SUBSET,
    );
}

/// Runs pytest on `tests` in the virtual environment `venv_name` made from `requirements`.
fn pytest(requirements: &str, venv_name: &str, tests: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client = root.join("clients").join("python");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let python = venv(&client, &client.join(requirements), &target.join(venv_name));
    run(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .args(tests)
            .current_dir(&client)
            .env("FANIN_BIN", env!("CARGO_BIN_EXE_fanin"))
            .env("FANIN_NAIVE_VENVS", &target),
        &format!("pytest clients/python ({requirements})"),
    );
}

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("{what}: cannot start: {error}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// A virtual environment at `venv` with the pinned `requirements` and the shim; the
/// requirements are installed once, the shim every time.
fn venv(client: &Path, requirements: &Path, venv: &Path) -> PathBuf {
    let pinned = std::fs::read_to_string(requirements)
        .unwrap_or_else(|error| panic!("{}: {error}", requirements.display()));
    let stamp = venv.join("fanin-requirements.txt");
    let python = venv.join("bin").join("python");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pinned.as_str()) {
        if pinned.lines().any(|line| line.starts_with("uwsgi==")) {
            assert_python_headers();
        }
        let _ = std::fs::remove_dir_all(venv);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(venv),
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
                .arg(requirements),
            &format!("pip install -r {}", requirements.display()),
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

/// uWSGI has no wheels: pip builds it, which needs `Python.h`. Without it pip's own error is
/// a screen of compiler output; this says what to install.
fn assert_python_headers() {
    let found = Command::new("python3")
        .args([
            "-c",
            "import os, sysconfig, sys; \
             sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))",
        ])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "the Python headers are missing, and uWSGI is built from source for the tests: \
         install them (Debian: apt-get install python3-dev; .ci/run does this)"
    );
}
