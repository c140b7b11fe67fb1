#[flumen::service]
trait Payments {
    #[cfg_attr(unix, idempotent)]
    async fn refund(&self, id: u64) -> bool;
}

fn main() {}
