//! Server-made identifiers (channel sids, anonymous identities): 32 hex
//! digits whose first 12 are the creation time in milliseconds and whose
//! other 20 are random (80 bits).
//!
//! Why time first: the store keys channels, memberships, messages and
//! identities by these ids. Random ids land every new row on a random page
//! of those B-trees, and each such page is written to the WAL at the next
//! commit and again at the checkpoint; ids that grow with time are appended
//! where the previous ones went, so a commit writes a few shared pages. The
//! random part keeps ids unguessable (access is checked on every command
//! anyway).

/// A new id as 32 lowercase hex digits.
pub(crate) fn new_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        & ((1 << 48) - 1);
    let random = rand::random::<u128>() & ((1 << 80) - 1);
    format!("{:032x}", millis << 80 | random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_grow_with_time() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
        assert!(a < b, "{a} then {b}");
        assert_ne!(a[12..], b[12..], "the random part differs");
    }
}
