//! Rough PUT ops/s: `cargo run --release -p tm-storage --example putbench -- DIR THREADS PUTS SIZE`.
use std::time::Instant;

use tm_storage::{ObjectMeta, Store, StoreConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let dir = a
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/tmp/tm-putbench".into());
    let threads: usize = a.get(2).map_or(Ok(8), |s| s.parse())?;
    let puts: usize = a.get(3).map_or(Ok(200), |s| s.parse())?;
    let size: usize = a.get(4).map_or(Ok(1024), |s| s.parse())?;
    let _ = std::fs::remove_dir_all(&dir);
    let s = Store::open(StoreConfig::new(&dir))?;
    s.create_bucket("bench")?;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..puts {
                    let body = vec![(t * 31 + i) as u8; size];
                    let mut body = body;
                    body[..8].copy_from_slice(&((t * puts + i) as u64).to_le_bytes());
                    let mut w = s
                        .begin_put("bench", &format!("{t}/{i}"), ObjectMeta::default())
                        .expect("begin");
                    w.write_all(&body).expect("write");
                    w.commit().expect("commit");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| "thread panicked")?;
    }
    let dt = t0.elapsed().as_secs_f64();
    let n = threads * puts;
    println!(
        "{n} puts of {size} B with {threads} threads: {:.0} puts/s, {:?}",
        n as f64 / dt,
        s.commit_stats()
    );
    Ok(())
}
