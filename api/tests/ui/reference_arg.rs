#[flumen::service]
trait Borrowing {
    async fn get(&self, key: &str) -> String;
}

fn main() {}
