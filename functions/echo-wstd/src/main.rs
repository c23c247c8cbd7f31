//! echo-wstd: streams a POSTed body straight back, chunk by chunk, without buffering it.
//! Written with `wstd` to show that components from other toolchains run unchanged.

use wstd::http::{Body, Error, Method, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    if request.method() == Method::POST || request.method() == Method::PUT {
        let (_parts, body) = request.into_parts();
        return Ok(Response::new(body));
    }
    let path = request.uri().path().to_string();
    Ok(Response::new(
        format!("echo-wstd: POST a body to {path} and it comes straight back\n").into(),
    ))
}
