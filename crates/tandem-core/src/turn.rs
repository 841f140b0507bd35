//! Keys in turn: each call takes a bounded slice of an ordered collection, starting after
//! where the last call stopped and wrapping around, so that every key gets its turn however
//! often the first ones are added again (the director's rounds, the data plane's ticks).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Up to `count` keys of `set` in turn (see [`take_in_turn`]).
pub(crate) fn set_in_turn<K: Ord + Clone>(
    set: &BTreeSet<K>,
    cursor: &mut Option<K>,
    count: usize,
) -> Vec<K> {
    take_in_turn(cursor, count, |after| match after {
        Some(key) => Box::new(set.range::<K, _>((Bound::Excluded(key), Bound::Unbounded)))
            as Box<dyn Iterator<Item = &K>>,
        None => Box::new(set.iter()),
    })
}

/// Up to `count` keys of `map` in turn (see [`take_in_turn`]).
pub(crate) fn keys_in_turn<K: Ord + Clone, V>(
    map: &BTreeMap<K, V>,
    cursor: &mut Option<K>,
    count: usize,
) -> Vec<K> {
    take_in_turn(cursor, count, |after| match after {
        Some(key) => Box::new(
            map.range::<K, _>((Bound::Excluded(key), Bound::Unbounded))
                .map(|(key, _)| key),
        ) as Box<dyn Iterator<Item = &K>>,
        None => Box::new(map.keys()),
    })
}

/// Up to `count` keys: those after `cursor`, in order, then from the first key again up to
/// `cursor` (so none twice); `cursor` moves to the last key taken. `keys(Some(key))` lists the
/// keys after `key`, `keys(None)` all of them, in order.
fn take_in_turn<'a, K: Ord + Clone + 'a>(
    cursor: &mut Option<K>,
    count: usize,
    keys: impl Fn(Option<&K>) -> Box<dyn Iterator<Item = &'a K> + 'a>,
) -> Vec<K> {
    let after = cursor.take();
    let mut taken: Vec<K> = match &after {
        Some(from) => keys(Some(from)).take(count).cloned().collect(),
        None => Vec::new(),
    };
    if taken.len() < count {
        let more = count - taken.len();
        let wrapped = keys(None)
            .take_while(|key| after.as_ref().is_none_or(|after| *key <= after))
            .take(more)
            .cloned();
        taken.extend(wrapped);
    }
    *cursor = taken.last().cloned();
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_go_round_without_taking_a_key_twice() {
        let set: BTreeSet<u32> = (1..=5).collect();
        let mut cursor = None;
        assert_eq!(set_in_turn(&set, &mut cursor, 2), [1, 2]);
        assert_eq!(set_in_turn(&set, &mut cursor, 2), [3, 4]);
        assert_eq!(set_in_turn(&set, &mut cursor, 2), [5, 1]);
        assert_eq!(cursor, Some(1));
        // More than there are: each once, from where it stopped.
        assert_eq!(set_in_turn(&set, &mut cursor, 10), [2, 3, 4, 5, 1]);
        let map: BTreeMap<u32, ()> = set.iter().map(|key| (*key, ())).collect();
        let mut cursor = Some(4);
        assert_eq!(keys_in_turn(&map, &mut cursor, 3), [5, 1, 2]);
        assert!(set_in_turn(&BTreeSet::<u32>::new(), &mut cursor, 3).is_empty());
        assert_eq!(cursor, None);
    }
}
