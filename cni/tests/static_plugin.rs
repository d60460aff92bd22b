//! The plugin is statically linked (see .cargo/config.toml): it must run on any node, whatever
//! that node's libc. Checked two ways: its ELF header names no program interpreter and no shared
//! library (and `file` agrees), and it answers CNI VERSION inside an empty chroot that holds
//! nothing but the binary — no libc, no loader, no /proc, no /dev.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const PLUGIN: &str = env!("CARGO_BIN_EXE_meshnet");

/// Program header types: PT_INTERP (the dynamic loader's path).
const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> usize {
    usize::try_from(u64::from_le_bytes(b[at..at + 8].try_into().unwrap())).unwrap()
}

/// The program header types of a little-endian ELF64 file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "ELF64, little-endian");
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38));
    (0..phnum)
        .map(|i| u32_at(elf, phoff + i * phentsize))
        .collect()
}

#[test]
fn the_plugin_needs_no_loader_and_no_shared_library() {
    let elf = std::fs::read(PLUGIN).unwrap();
    assert!(
        !program_header_types(&elf).contains(&PT_INTERP),
        "{PLUGIN} asks for a dynamic loader: it was not linked with +crt-static \
         (built outside the workspace's .cargo/config.toml?)"
    );
    match Command::new("file").arg("-b").arg(PLUGIN).output() {
        Ok(out) if out.status.success() => {
            let said = String::from_utf8_lossy(&out.stdout);
            // glibc's static PIE: `file` says "static-pie linked" (a non-PIE one would be
            // "statically linked"); never "dynamically linked".
            assert!(
                said.contains("static-pie linked") || said.contains("statically linked"),
                "file says: {said}"
            );
        }
        _ if std::env::var_os("CI").is_some() => panic!("`file` is not installed"),
        _ => eprintln!("`file` is not installed: checked the ELF header only"),
    }
}

#[test]
fn the_plugin_answers_version_in_an_empty_chroot() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipped: chroot needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(PLUGIN, root.path().join("meshnet")).unwrap();
    let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "nothing but the binary");
    let out = Command::new("chroot")
        .arg(root.path())
        .arg("/meshnet")
        .env_clear()
        // For finding chroot(8); inside, PATH names directories that do not exist.
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("running chroot");
    assert!(
        out.status.success(),
        "meshnet in an empty chroot: {out:?} (stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("VERSION prints JSON");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        "{v}"
    );
}
