//! An index-linked doubly linked list on a slab, the queue every policy is built on:
//! O(1) push at the head, unlink, and walk towards the head from any node.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    key: u64,
    prev: u32,
    next: u32,
    /// Policy-owned per-entry state (frequency, visited bit, queue id).
    bits: u8,
}

/// A queue of keys, head = most recently inserted, tail = oldest.
#[derive(Debug, Default, Clone)]
pub(crate) struct List {
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    pub(crate) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Inserts `key` at the head; returns its handle.
    pub(crate) fn push_front(&mut self, key: u64, bits: u8) -> u32 {
        let node = Node {
            key,
            prev: NIL,
            next: self.head,
            bits,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        if self.head != NIL {
            self.nodes[self.head as usize].prev = idx;
        } else {
            self.tail = idx;
        }
        self.head = idx;
        self.len += 1;
        idx
    }

    /// Removes the node `idx`; returns its key.
    pub(crate) fn unlink(&mut self, idx: u32) -> u64 {
        let Node {
            key, prev, next, ..
        } = self.nodes[idx as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        self.free.push(idx);
        self.len -= 1;
        key
    }

    /// Moves `idx` to the head.
    pub(crate) fn move_to_front(&mut self, idx: u32) {
        if self.head == idx {
            return;
        }
        let Node { prev, next, .. } = self.nodes[idx as usize];
        // Unlink (prev != NIL since idx is not the head).
        self.nodes[prev as usize].next = next;
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        self.nodes[idx as usize].prev = NIL;
        self.nodes[idx as usize].next = self.head;
        self.nodes[self.head as usize].prev = idx;
        self.head = idx;
    }

    pub(crate) fn tail(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The node one step closer to the head.
    pub(crate) fn prev(&self, idx: u32) -> Option<u32> {
        let p = self.nodes[idx as usize].prev;
        (p != NIL).then_some(p)
    }

    pub(crate) fn bits(&self, idx: u32) -> u8 {
        self.nodes[idx as usize].bits
    }

    pub(crate) fn set_bits(&mut self, idx: u32, bits: u8) {
        self.nodes[idx as usize].bits = bits;
    }
}
