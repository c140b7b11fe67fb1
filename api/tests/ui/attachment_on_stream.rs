#[flumen::service]
trait Feed {
    async fn feed(&self, blob: flumen::Attachment) -> impl Stream<Item = u32>;
}

fn main() {}
