#![deny(deprecated)]

#[flumen::service]
pub trait Payments {
    /// Deprecated where the condition holds: the client's method carries the mark too.
    #[cfg_attr(all(), deprecated = "call `refund_v2`")]
    async fn refund(&self, id: u64) -> bool;
}

async fn caller(payments: PaymentsClient) {
    let _ = payments.refund(7).await;
}

fn main() {
    let _ = caller;
}
