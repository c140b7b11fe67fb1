#[flumen::service]
trait Mutating {
    async fn set(&mut self, value: u32);
}

fn main() {}
