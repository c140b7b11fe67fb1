#[flumen::service]
trait Generic {
    async fn get<T: serde::Serialize>(&self, key: T) -> String;
}

fn main() {}
