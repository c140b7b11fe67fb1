//! Stream flow control driven by an arbitrary peer: items of any size with or without credit,
//! consumption in any order, grants of any size. The receiver refuses an item exactly when
//! the peer has no credit left, never buffers more than its window plus one item, and an
//! obedient sender is never refused; credit sums never overflow.
#![no_main]

use std::collections::VecDeque;

use flumen_stream::flow::{RecvWindow, SendCredit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&window, ops)) = data.split_first() else {
        return;
    };
    let (mut recv, initial) = RecvWindow::new(u32::from(window) << 12);
    let mut send = SendCredit::default();
    send.grant(initial);
    let mut queue = VecDeque::new();
    let mut largest = 0;
    for op in ops.chunks(3) {
        let [kind, a, b] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let len = (usize::from(a) << 8 | usize::from(b)) * 4;
        match kind % 4 {
            // The sender obeys its credit.
            0 => {
                if send.can_send() {
                    send.spend(len);
                    recv.receive(len)
                        .expect("an obedient sender is never refused");
                    queue.push_back(len);
                    largest = largest.max(len);
                }
            }
            // The peer ignores its credit: refused once none is left.
            1 => {
                let obeyed = send.can_send();
                match recv.receive(len) {
                    Ok(()) => {
                        assert!(obeyed, "an item past the credit was taken");
                        send.spend(len);
                        queue.push_back(len);
                        largest = largest.max(len);
                    }
                    Err(e) => {
                        assert!(!obeyed, "an item within the credit was refused");
                        assert_eq!(e.len, len);
                    }
                }
            }
            // The application consumes the oldest item.
            2 => {
                if let Some(len) = queue.pop_front() {
                    if let Some(grant) = recv.consume(len) {
                        send.grant(grant);
                    }
                }
            }
            // A grant of any size on the sending side must not overflow.
            _ => {
                let mut other = SendCredit::default();
                for _ in 0..usize::from(a) {
                    other.grant(u32::MAX);
                }
                assert!(other.can_send());
            }
        }
        assert!(recv.buffered() <= recv.window() as usize + largest);
        assert_eq!(recv.buffered(), queue.iter().sum::<usize>());
    }
});
