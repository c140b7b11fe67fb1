#[flumen::service]
trait Upload {
    async fn upload(&self, chunks: flumen::Streaming<Vec<u8>>, name: String) -> u64;
}

fn main() {}
