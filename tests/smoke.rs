mod common;
use common::TestServer;

#[test]
fn two_clients_chat() {
    let server = TestServer::start();
    let (mut a, a_nick) = server.join();
    let (mut b, b_nick) = server.join();
    a.expect_line(&format!("* {b_nick} joined #lobby"));
    a.send("hello");
    b.expect_line(&format!("{a_nick}: hello"));
    a.expect_nothing_pending();
    server.stop().unwrap();
}
