//! Writes the seed corpora to `fuzz/corpus/<target>/` (existing files are kept).

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, input) in fuzz_targets::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), &input)?;
        println!("{target}/{name}: {} bytes", input.len());
    }
    Ok(())
}
