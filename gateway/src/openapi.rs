//! The OpenAPI 3.1 description of the API, generated from the handlers' annotations and served
//! at `/openapi.json`.

use messaging::contracts::{HistoryEntry, OrderView, StatusCounts};
use service_kit::problem::{FieldError, Problem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::requests::{
    OrderAccepted, OrderRequest, ProductRequest, ProductResponse, SellerRanking, SellersResponse,
    SummaryResponse, TopProduct,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Saga orders API", description = "Orders confirmed or rejected through a RabbitMQ saga. Errors are application/problem+json."),
    paths(crate::http::place_order, crate::http::get_order, crate::http::create_product, crate::http::get_product,
          crate::http::sales_summary, crate::http::sellers_report),
    components(schemas(OrderRequest, OrderAccepted, OrderView, HistoryEntry, ProductRequest, ProductResponse,
                       SummaryResponse, StatusCounts, TopProduct, SellersResponse, SellerRanking, Problem, FieldError)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
