// AIP-158 pagination as an async iterator: every item of every page, fetching the next
// page only when the consumer gets there.

/**
 * Every item of a List call, page after page: `list` is a promise-based List method
 * (`clients.camera.listCameras`), `request` its first request (filter, order, page size),
 * `items` picks the page's items (`(page) => page.cameras`).
 */
export async function* paginate<Request extends { pageToken?: string }, Page extends { nextPageToken: string }, Item>(
  list: (request: Request) => Promise<Page>,
  request: Request,
  items: (page: Page) => readonly Item[],
): AsyncGenerator<Item, void, undefined> {
  let pageToken = request.pageToken ?? "";
  do {
    const page = await list({ ...request, pageToken });
    yield* items(page);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
}
