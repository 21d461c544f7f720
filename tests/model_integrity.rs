//! A damaged whisper model is refused at load (issue 10): `check` fails on a model whose
//! tensor data was corrupted, by its pinned checksum when the file is a known one and by the
//! known-audio self-test when it is not, and passes on the real model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(model: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .arg("check")
        .arg("--model")
        .arg(model)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env_remove("RENEWAL_BOT_MODEL")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn real_model() -> PathBuf {
    let model = root().join("models/ggml-base-q8_0.bin");
    assert!(model.is_file(), "run models/fetch first");
    model
}

fn read_i32(bytes: &[u8], at: &mut usize) -> i32 {
    let value = i32::from_le_bytes(bytes[*at..*at + 4].try_into().expect("4 bytes"));
    *at += 4;
    value
}

/// Where each tensor's data lies in a whisper.cpp ggml file: magic, 11 hyperparameters, the
/// mel filters, the vocabulary, then per tensor its dimensions, type and name, then its data.
fn tensor_data(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = 4 + 11 * 4;
    let (mels, fft) = (read_i32(bytes, &mut at), read_i32(bytes, &mut at));
    at += (mels * fft) as usize * 4;
    let vocab = read_i32(bytes, &mut at);
    for _ in 0..vocab {
        let len = read_i32(bytes, &mut at) as usize;
        at += len;
    }
    let mut ranges = Vec::new();
    while at + 12 <= bytes.len() {
        let dims = read_i32(bytes, &mut at);
        let name_len = read_i32(bytes, &mut at) as usize;
        let kind = read_i32(bytes, &mut at);
        let elements: usize = (0..dims)
            .map(|_| read_i32(bytes, &mut at) as usize)
            .product();
        at += name_len;
        let size = match kind {
            0 => elements * 4,
            1 => elements * 2,
            8 => elements / 32 * 34,
            other => panic!("tensor type {other} not expected in the q8_0 model"),
        };
        ranges.push(at..at + size);
        at += size;
    }
    assert_eq!(
        at,
        bytes.len(),
        "the tensor walk ends at the end of the file"
    );
    ranges
}

/// A copy of the real model with the data of its big tensors zeroed: every header stays
/// intact, so whisper loads it without complaint.
fn damaged_copy(dir: &Path, name: &str) -> PathBuf {
    let mut bytes = std::fs::read(real_model()).expect("read the model");
    for range in tensor_data(&bytes) {
        if range.len() >= 1 << 20 {
            bytes[range].iter_mut().for_each(|b| *b = 0);
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the copy");
    path
}

#[test]
fn check_passes_the_real_model_with_its_checksum_and_self_test() {
    let out = check(&real_model());
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("checksum sha256") && said.contains("self-test"),
        "{said}"
    );
}

#[test]
fn a_known_model_with_damaged_tensors_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        root().join("models/checksums.txt"),
        dir.path().join("checksums.txt"),
    )
    .expect("copy the pins");
    let model = damaged_copy(dir.path(), "ggml-base-q8_0.bin");
    let out = check(&model);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("damaged") && said.contains("checksum"),
        "{said}"
    );
    assert!(said.contains("models/fetch"), "{said}");
}

#[test]
fn an_unknown_model_with_damaged_tensors_fails_the_self_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = damaged_copy(dir.path(), "my-model.bin");
    let out = check(&model);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("damaged") && said.contains("heard"), "{said}");
}
