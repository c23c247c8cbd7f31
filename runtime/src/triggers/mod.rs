//! What makes a function run: HTTP requests ([`http`], the function listener) and events
//! ([`events`], the consumer loops), schedule fires among them ([`schedules`]: pause and
//! catch-up before the handler runs). Both sit on top of the node and reach it through
//! narrow handles; the node announces deployment changes and knows nothing of triggers.

pub mod events;
pub mod http;
pub mod schedules;
