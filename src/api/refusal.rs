//! Refusing a request body without reading it. When a handler or extractor refuses a body it
//! has not read to its end (over the size limit, a wrong type), actix would otherwise read and
//! throw away the rest before the connection can serve the next request: 100 MiB of a refused
//! chunked upload, however long that takes. Instead the response holds the unread payload until
//! it has been sent, and closes the connection, so actix stops reading after a short linger.

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A payload left unread by a refusal, kept in the request's extensions until the response
/// takes it.
struct Unread(Payload);

/// Marks `req`'s body as refused: the response to it will close the connection.
pub(super) fn leave_unread(req: &HttpRequest, payload: Payload) {
    req.extensions_mut().insert(Unread(payload));
}

/// `res`, holding `payload` until it is sent, on a connection that then closes.
pub(super) fn close_with(res: HttpResponse, payload: Payload) -> HttpResponse {
    let mut res = res
        .map_body(|_, body| Held {
            body,
            _payload: payload,
        })
        .map_into_boxed_body();
    res.head_mut().set_connection_type(ConnectionType::Close);
    res
}

/// Gives the response to a request whose body was refused unread the payload to hold, and
/// closes its connection.
pub(super) async fn close_refused(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse, actix_web::Error> {
    let res = next.call(req).await?.map_into_boxed_body();
    let unread = res.request().extensions_mut().remove::<Unread>();
    Ok(match unread {
        Some(Unread(payload)) => {
            let (req, res) = res.into_parts();
            ServiceResponse::new(req, close_with(res, payload))
        }
        None => res,
    })
}

/// A response body that keeps the request's payload alive until the body has been sent.
struct Held {
    body: BoxBody,
    _payload: Payload,
}

impl MessageBody for Held {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
