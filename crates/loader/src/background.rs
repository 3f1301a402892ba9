//! [`Background`]: an iterator whose items are made on a thread of their own, a bounded number
//! ahead of the reader.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Items made on a background thread by running a function over a source iterator, at most
/// `ahead` finished items ahead of the reader. Dropping it stops the thread (at its next item)
/// and waits for it.
pub struct Background<T> {
    receiver: Option<Receiver<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Background<T> {
    /// Runs `make` over `source` on a thread named `name`; the thread stops after an item
    /// that `make` marks as the last (`true`), such as an error.
    pub fn spawn<I, F>(name: &str, ahead: usize, source: I, mut make: F) -> Self
    where
        I: IntoIterator + Send + 'static,
        F: FnMut(I::Item) -> (T, bool) + Send + 'static,
    {
        let (sender, receiver) = sync_channel(ahead.max(1));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for item in source {
                    let (made, last) = make(item);
                    if sender.send(made).is_err() || last {
                        return;
                    }
                }
            })
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Self {
            receiver: Some(receiver),
            thread: Some(thread),
        }
    }
}

impl<T> Iterator for Background<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail.
        drop(self.receiver.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn keeps_order_and_stops_after_the_last_item() {
        let made: Vec<i32> = Background::spawn("test", 1, 0..10, |i| (i * 2, i == 3)).collect();
        assert_eq!(made, [0, 2, 4, 6]);
    }

    #[test]
    fn dropping_it_early_stops_the_thread() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let mut items = Background::spawn("test", 1, 0.., move |i: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
            (i, false)
        });
        assert_eq!(items.next(), Some(0));
        assert_eq!(items.next(), Some(1));
        // An endless source: the drop returns only because the thread stopped.
        drop(items);
        let made = seen.load(Ordering::SeqCst);
        assert!((2..=4).contains(&made), "{made} made");
    }
}
