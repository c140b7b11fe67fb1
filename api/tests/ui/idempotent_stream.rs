#[flumen::service]
trait Feed {
    #[idempotent]
    async fn watch(&self, from: u64) -> impl Stream<Item = u64>;
}

fn main() {}
