//! `register` is idempotent and safe to call from several threads (its own test binary:
//! the registration counter is process-wide).

#[test]
fn register_is_idempotent_and_thread_safe() {
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| walguard::register(walguard::Options::default())))
        .collect();
    for t in threads {
        t.join()
            .expect("register thread")
            .expect("register walguard");
    }
    assert_eq!(
        walguard::stats().registrations,
        1,
        "eight concurrent calls register once"
    );
    walguard::register(walguard::Options::default().make_default(false))
        .expect("again, not default");
    walguard::register(walguard::Options::default()).expect("again, default");
    assert_eq!(walguard::stats().registrations, 1);
    let conn = rusqlite::Connection::open_in_memory().expect("open");
    let json: String = conn
        .query_row("SELECT walguard_stats()", [], |r| r.get(0))
        .expect("walguard_stats()");
    assert!(json.contains("\"registrations\":1"), "{json}");
}
