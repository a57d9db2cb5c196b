//! `tm-lazyfs MOUNTPOINT`: serve an empty power-loss file system (see the `tm_powerloss` crate
//! docs for the durability model) until stdin closes. Commands on stdin, one per line:
//!
//! - `cut`: cut the power (unsynced changes are lost; every operation fails with EIO)
//! - `cut-torn SEED`: cut the power keeping a seeded random part of the unsynced changes
//! - `remount`: unmount (nothing may use it) and serve the durable state again
//! - `stats`: print the counters
//! - `quit`: unmount and exit
#![forbid(unsafe_code)]

use std::io::BufRead;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mp), None) = (args.next(), args.next()) else {
        eprintln!("usage: tm-lazyfs MOUNTPOINT  (commands on stdin: cut, cut-torn SEED, remount, stats, quit)");
        std::process::exit(2);
    };
    let mut fs = match tm_powerloss::LazyFs::mount(&mp) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!(
                "tm-lazyfs: cannot mount {mp}: {e} (needs root or fusermount3, and /dev/fuse)"
            );
            std::process::exit(1);
        }
    };
    println!("mounted {mp}");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cut"] => {
                fs.cut_power(None);
                println!("power cut");
            }
            ["cut-torn", seed] => match seed.parse::<u64>() {
                Ok(s) => {
                    fs.cut_power(Some(&mut tm_powerloss::Rng::new(s)));
                    println!("power cut (torn, seed {s})");
                }
                Err(_) => println!("error: cut-torn needs a number, got {seed:?}"),
            },
            ["remount"] => match fs.remount() {
                Ok(()) => println!("remounted"),
                Err(e) => println!("error: remount: {e} (is the mount still in use?)"),
            },
            ["stats"] => println!("{:?}", fs.stats()),
            ["quit"] => break,
            [] => {}
            other => println!(
                "error: unknown command {other:?} (cut, cut-torn SEED, remount, stats, quit)"
            ),
        }
    }
    if let Err(e) = fs.unmount() {
        eprintln!("tm-lazyfs: unmount: {e}");
        std::process::exit(1);
    }
}
