#[flumen::service]
trait Payments {
    #[idempotant]
    async fn refund(&self, id: u64) -> bool;
}

fn main() {}
