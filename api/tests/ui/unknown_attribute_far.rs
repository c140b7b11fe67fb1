#[flumen::service]
trait Payments {
    #[instrument]
    async fn refund(&self, id: u64) -> bool;
}

fn main() {}
