//! Free TCP ports on loopback.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Ports already handed out by this process: a released port can come back from a probe, and
/// two tests sharing a server would see each other's messages.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port on 127.0.0.1 that nothing listens on now and that this process never handed out
/// before, for a server the test starts.
///
/// Picked below the ephemeral range (read from `/proc/sys/net/ipv4/ip_local_port_range`), so
/// that no client socket of a test, nor the TIME_WAIT sockets it leaves, can hold it between
/// the probe and the server's bind. Falls back to a port the kernel chooses when the range
/// leaves no room below it. Another process may still take it first: servers started on it
/// must check that the one answering is theirs (as [`crate::NatsServer`] does).
pub fn free_port() -> u16 {
    let low = ephemeral_low();
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if low >= 4096 {
        for _ in 0..1000 {
            let port = rand::random_range(low / 2..low);
            if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                taken.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a free port on 127.0.0.1");
        if taken.insert(port) {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for port in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("free port can be bound");
        }
    }
}
