//! What the interop VMs need, built once and kept under `target/kernel-interop/`:
//!
//! - `kernel/`: Debian bookworm's `linux-image-<abi>-amd64` (the ABI `linux-image-amd64`
//!   points to when first built), extracted with `dpkg-deb -x`;
//! - `dkms/dm-writeboost.ko`: Debian's `dm-writeboost-dkms` built by `dkms build -k <abi>`
//!   against Debian's `linux-headers-<abi>-amd64` (installed on the host with apt-get), with
//!   dkms's trees under `dkms/` (nothing is registered in /var/lib/dkms);
//! - `qemu/`: `qemu-system-x86` and the libraries it needs that the host lacks, extracted
//!   (installing it would replace the host's qemu-utils backport), run with LD_LIBRARY_PATH;
//! - `guest/`: the initramfs's fixed part: the modules in load order, dmsetup and its
//!   libraries (from the host, which is bookworm too).
//!
//! Each step leaves a `.done` stamp; a later run skips every step whose stamp exists.
//! `rm -rf target/kernel-interop` starts over (and picks up a newer kernel ABI).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Artefacts {
    pub vmlinuz: PathBuf,
    pub qemu: PathBuf,
    pub qemu_lib_path: String,
    pub qemu_data_dirs: Vec<PathBuf>,
    pub guest_base: PathBuf,
    /// What was built from which package version, for the report.
    pub versions: String,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut c = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    c
}

/// Runs an apt-get command; on failure `apt-get update` once and again.
fn apt_retry(args: &[&str], dir: Option<&Path>) -> Result<String, String> {
    let go = || {
        let mut c = apt(args);
        if let Some(d) = dir {
            c.current_dir(d);
        }
        sh(&mut c)
    };
    go().or_else(|_| {
        let _ = sh(&mut apt(&["update"]));
        go()
    })
}

/// Installs host packages that are missing (they never conflict with qemu-utils).
pub fn ensure_host_packages(pkgs: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "kernel-interop: installing {} with apt-get",
        missing.join(" ")
    );
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt_retry(&args, None).map_err(|e| {
        format!(
            "{e}\ninstall them by hand: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        )
    })?;
    Ok(())
}

fn apt_cache(args: &[&str]) -> Result<String, String> {
    let out = sh(Command::new("apt-cache").args(args))?;
    if out.trim().is_empty() {
        let _ = sh(&mut apt(&["update"]));
        return sh(Command::new("apt-cache").args(args));
    }
    Ok(out)
}

/// Downloads `pkg` into `debs/` (unless there) and returns the .deb's path.
fn download(debs: &Path, pkg: &str) -> Result<PathBuf, String> {
    fs::create_dir_all(debs).map_err(|e| e.to_string())?;
    let find = || {
        fs::read_dir(debs).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_retry(&["download", pkg], Some(debs))?;
    find().ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))
}

fn extract(deb: &Path, into: &Path) -> Result<(), String> {
    fs::create_dir_all(into).map_err(|e| e.to_string())?;
    sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into)).map(|_| ())
}

fn deb_version(deb: &Path) -> String {
    sh(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn stamp(dir: &Path) -> PathBuf {
    dir.join(".done")
}

/// Makes sure every artefact exists (building what is missing) and returns where they are.
pub fn ensure(root: &Path) -> Result<Artefacts, String> {
    fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let debs = root.join("debs");
    // The kernel ABI: fixed at the first build.
    let kver_file = root.join("kernel-version");
    let kver = match fs::read_to_string(&kver_file) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            let deps = apt_cache(&["depends", "linux-image-amd64"])?;
            let kver = deps
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
                .find(|v| v.ends_with("-amd64"))
                .ok_or_else(|| {
                    format!("apt-cache depends linux-image-amd64 names no image:\n{deps}")
                })?
                .to_string();
            fs::write(&kver_file, &kver).map_err(|e| e.to_string())?;
            kver
        }
    };
    let mut versions = String::new();

    // 1. The kernel image.
    let kdir = root.join("kernel");
    let image_deb = format!("linux-image-{kver}");
    if !stamp(&kdir).exists() {
        eprintln!("kernel-interop: downloading and extracting {image_deb}");
        let _ = fs::remove_dir_all(&kdir);
        extract(&download(&debs, &image_deb)?, &kdir)?;
        fs::write(stamp(&kdir), "").map_err(|e| e.to_string())?;
    }
    versions += &format!(
        "{image_deb} {}",
        download(&debs, &image_deb).map(|d| deb_version(&d))?
    );

    // 2. dm-writeboost.ko from Debian's dkms package.
    let ddir = root.join("dkms");
    let ko = ddir.join("dm-writeboost.ko");
    let dkms_deb = download(&debs, "dm-writeboost-dkms")?;
    let dkms_version = deb_version(&dkms_deb);
    if !stamp(&ddir).exists() {
        ensure_host_packages(&["dkms", &format!("linux-headers-{kver}")])?;
        eprintln!(
            "kernel-interop: building dm-writeboost-dkms {dkms_version} for {kver} with dkms"
        );
        let _ = fs::remove_dir_all(&ddir);
        let src = ddir.join("src");
        extract(&dkms_deb, &src)?;
        let usr_src = src.join("usr/src");
        let srcdir = fs::read_dir(&usr_src)
            .map_err(|e| format!("{}: {e}", usr_src.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("dm-writeboost-"))
            .ok_or("dm-writeboost-dkms has no /usr/src/dm-writeboost-*")?;
        let modver = srcdir.trim_start_matches("dm-writeboost-").to_string();
        let tree = ddir.join("tree");
        fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
        let dkms = |action: &str, extra: &[&str]| {
            let mut c = Command::new("dkms");
            c.args([action, "-m", "dm-writeboost", "-v", &modver])
                .args(extra)
                .arg("--sourcetree")
                .arg(&usr_src)
                .arg("--dkmstree")
                .arg(&tree);
            sh(&mut c)
        };
        dkms("add", &[])?;
        dkms("build", &["-k", &kver])?;
        let built = tree.join(format!(
            "dm-writeboost/{modver}/{kver}/x86_64/module/dm-writeboost.ko"
        ));
        fs::copy(&built, &ko).map_err(|e| format!("{}: {e}", built.display()))?;
        fs::write(stamp(&ddir), "").map_err(|e| e.to_string())?;
    }
    versions += &format!(", dm-writeboost-dkms {dkms_version} (dkms build -k {kver})");

    // 3. qemu-system-x86 and the libraries the host lacks.
    let qdir = root.join("qemu");
    let qemu = qdir.join("usr/bin/qemu-system-x86_64");
    let lib_path = format!(
        "{}:{}",
        qdir.join("usr/lib/x86_64-linux-gnu").display(),
        qdir.join("lib/x86_64-linux-gnu").display()
    );
    if !stamp(&qdir).exists() {
        eprintln!("kernel-interop: downloading and extracting qemu-system-x86 (not installed: it would replace qemu-utils)");
        let _ = fs::remove_dir_all(&qdir);
        fetch_qemu(&debs, &qdir)?;
        let ldd = sh(Command::new("ldd")
            .arg(&qemu)
            .env("LD_LIBRARY_PATH", &lib_path))?;
        let missing: Vec<&str> = ldd.lines().filter(|l| l.contains("not found")).collect();
        if !missing.is_empty() {
            return Err(format!(
                "qemu-system-x86_64 still lacks libraries after extracting its dependencies:\n{}",
                missing.join("\n")
            ));
        }
        fs::write(stamp(&qdir), "").map_err(|e| e.to_string())?;
    }
    let qdeb = download(&debs, "qemu-system-x86")?;
    versions += &format!(", qemu-system-x86 {}", deb_version(&qdeb));

    // 4. The initramfs's fixed part.
    let gdir = root.join("guest");
    if !stamp(&gdir).exists() {
        ensure_host_packages(&["dmsetup", "kmod"])?;
        let _ = fs::remove_dir_all(&gdir);
        build_guest_base(&kdir, &kver, &ko, &gdir)?;
        fs::write(stamp(&gdir), "").map_err(|e| e.to_string())?;
    }

    Ok(Artefacts {
        vmlinuz: kdir.join(format!("boot/vmlinuz-{kver}")),
        qemu,
        qemu_lib_path: lib_path,
        qemu_data_dirs: vec![qdir.join("usr/share/qemu"), qdir.join("usr/share/seabios")],
        guest_base: gdir,
        versions,
    })
}

/// The direct dependencies of `pkg` that the host does not have (for an alternative, the
/// first member, unless some member is installed).
fn missing_deps(pkg: &str) -> Result<Vec<String>, String> {
    let out = apt_cache(&[
        "depends",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        pkg,
    ])?;
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for line in out.lines() {
        let t = line.trim();
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some(name) = rest.strip_prefix("Depends: ") else {
            continue;
        };
        if name.starts_with('<') {
            // A virtual package: skip it.
            open = alt;
            continue;
        }
        if open {
            groups.last_mut().unwrap().push(name.to_string());
        } else {
            groups.push(vec![name.to_string()]);
        }
        open = alt;
    }
    Ok(groups
        .into_iter()
        .filter(|g| !g.iter().any(|p| installed(p)))
        .map(|g| g[0].clone())
        .collect())
}

fn fetch_qemu(debs: &Path, qdir: &Path) -> Result<(), String> {
    let mut todo = vec!["qemu-system-x86".to_string()];
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        extract(&download(debs, &p)?, qdir)?;
        // The binary's own dependencies, and the libraries' (shared objects need theirs).
        if p == "qemu-system-x86" || p.starts_with("lib") {
            for d in missing_deps(&p)? {
                if d.starts_with("lib")
                    || d == "qemu-system-common"
                    || d == "qemu-system-data"
                    || d == "seabios"
                {
                    todo.push(d);
                }
            }
        }
    }
    Ok(())
}

/// `modules.dep` of the extracted kernel (after depmod), by module name.
fn module_deps(kdir: &Path, kver: &str) -> Result<BTreeMap<String, (String, Vec<String>)>, String> {
    sh(Command::new("depmod").arg("-b").arg(kdir).arg(kver))?;
    let dep_file = kdir.join(format!("lib/modules/{kver}/modules.dep"));
    let text = fs::read_to_string(&dep_file).map_err(|e| format!("{}: {e}", dep_file.display()))?;
    let name = |path: &str| {
        Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_")
    };
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        m.insert(
            name(path),
            (
                path.to_string(),
                deps.split_whitespace().map(name).collect(),
            ),
        );
    }
    Ok(m)
}

fn build_guest_base(kdir: &Path, kver: &str, ko: &Path, gdir: &Path) -> Result<(), String> {
    let updates = kdir.join(format!("lib/modules/{kver}/updates"));
    fs::create_dir_all(&updates).map_err(|e| e.to_string())?;
    fs::copy(ko, updates.join("dm-writeboost.ko")).map_err(|e| e.to_string())?;
    let deps = module_deps(kdir, kver)?;
    // crc32c_generic first: libcrc32c (dm-writeboost's checksum) wants a "crc32c" driver.
    let wanted = [
        "crc32c_generic",
        "virtio_pci",
        "virtio_blk",
        "dm_writeboost",
    ];
    let mut order: Vec<String> = Vec::new();
    fn visit(
        m: &BTreeMap<String, (String, Vec<String>)>,
        n: &str,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|o| o == n) {
            return Ok(());
        }
        let (_, deps) = m
            .get(n)
            .ok_or_else(|| format!("module {n} not in modules.dep"))?;
        for d in deps {
            visit(m, d, order)?;
        }
        order.push(n.to_string());
        Ok(())
    }
    for w in wanted {
        visit(&deps, w, &mut order)?;
    }
    let mdir = gdir.join("modules");
    fs::create_dir_all(&mdir).map_err(|e| e.to_string())?;
    let mut list = String::new();
    for n in &order {
        let path = &deps[n].0;
        let src = kdir.join(format!("lib/modules/{kver}/{path}"));
        let file = format!("{n}.ko");
        fs::copy(&src, mdir.join(&file)).map_err(|e| format!("{}: {e}", src.display()))?;
        list += &file;
        list.push('\n');
    }
    fs::write(gdir.join("modules.order"), list).map_err(|e| e.to_string())?;
    copy_with_libs(Path::new("/sbin/dmsetup"), "sbin/dmsetup", gdir)
}

/// Copies a host executable into `root` at `rel`, with every library `ldd` names at the same
/// path (the guest runs the host's own binaries; both are Debian bookworm).
pub fn copy_with_libs(exe: &Path, rel: &str, root: &Path) -> Result<(), String> {
    let mut files = vec![(exe.to_path_buf(), rel.to_string())];
    for line in sh(Command::new("ldd").arg(exe))?.lines() {
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            files.push((
                PathBuf::from(path),
                path.trim_start_matches('/').to_string(),
            ));
        }
    }
    for (src, rel) in files {
        let dst = root.join(&rel);
        fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
        fs::copy(&src, &dst).map_err(|e| format!("{}: {e}", src.display()))?;
    }
    Ok(())
}

/// Writes an uncompressed newc cpio archive of every file under each of `roots` (a later
/// root's file wins) plus `/dev/console` (the kernel opens it for init's stdout before
/// devtmpfs is mounted).
pub fn write_cpio(roots: &[&Path], out: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    type Entries = BTreeMap<String, (u32, Vec<u8>)>;
    fn walk(dir: &Path, rel: &str, entries: &mut Entries) -> Result<(), String> {
        for e in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::metadata(e.path()).map_err(|e| e.to_string())?;
            if md.is_dir() {
                entries.insert(r.clone(), (0o040755, Vec::new()));
                walk(&e.path(), &r, entries)?;
            } else {
                let mode = 0o100000 | (md.permissions().mode() & 0o777);
                let data = fs::read(e.path()).map_err(|e| e.to_string())?;
                entries.insert(r, (mode, data));
            }
        }
        Ok(())
    }
    let mut entries = Entries::new();
    for r in roots {
        walk(r, "", &mut entries)?;
    }
    let mut buf = Vec::new();
    let mut ino = 1u32;
    let mut put = |buf: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        ino += 1;
        buf.extend_from_slice(b"070701");
        for f in fields {
            buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        buf.extend_from_slice(data);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
    };
    put(&mut buf, "dev", 0o040755, &[], (0, 0));
    put(&mut buf, "dev/console", 0o020600, &[], (5, 1));
    // BTreeMap order puts every directory before what it holds.
    for (name, (mode, data)) in &entries {
        if name != "dev" {
            put(&mut buf, name, *mode, data, (0, 0));
        }
    }
    put(&mut buf, "TRAILER!!!", 0, &[], (0, 0));
    fs::write(out, buf).map_err(|e| format!("{}: {e}", out.display()))
}
