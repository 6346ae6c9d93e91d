//! The one structure every bounded table of the receive path evicts from: a hash map that
//! keeps its entries in the order they were last touched, oldest first, so that finding the
//! entry to evict costs O(1) instead of a scan of the whole table (which a flood forcing an
//! eviction per datagram would pay on every datagram).
//!
//! It is [`hashlink`]'s `LinkedHashMap` (a well-kept crate: a hash table whose entries are also
//! on a doubly linked list) with foldhash, seeded per process, as the hasher. The convention
//! its users follow: `insert` puts an entry at the back (newest) and moves an existing one
//! there; an access that counts as a touch uses `to_back` (which also returns the entry); a
//! read that does not count uses `get`/`get_mut`; the entry to evict is `front()` (or
//! `pop_front()`). Users: eCAL message reassembly (`fragment::Reassembler`, least recently
//! handled partial), the per-subscriber order filters (`pubsub::FilterTable`, least recently
//! heard publisher), and in the capture transport IPv4 reassembly (least recently touched
//! datagram) and the direct-placement streams (oldest created).

/// A hash map in touch order, oldest first (see the module documentation).
pub type OldestFirst<K, V> = hashlink::LinkedHashMap<K, V, foldhash::fast::RandomState>;

/// An empty [`OldestFirst`] with a hasher seeded for this process.
pub fn oldest_first<K, V>() -> OldestFirst<K, V> {
    OldestFirst::with_hasher(foldhash::fast::RandomState::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_follows_inserts_and_touches() {
        let mut m = oldest_first();
        for k in 0..5u32 {
            m.insert(k, k * 10);
        }
        assert_eq!(m.front(), Some((&0, &0)));
        // A touch moves to the back; a plain read or write does not.
        *m.to_back(&0).unwrap() += 1;
        *m.get_mut(&1).unwrap() += 1;
        assert_eq!(m.front(), Some((&1, &11)));
        // Re-inserting an existing key makes it the newest.
        m.insert(1, 12);
        assert_eq!(m.pop_front(), Some((2, 20)));
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![3, 4, 0, 1]);
    }
}
