/*
 * QuPath (>= 0.4) script: segment the nuclei inside the selected annotation with a running
 * `wsi-weakseg serve` and import them as detections (children of the annotation).
 *
 *   1. Start the server on the machine that holds the slides:
 *        wsi-weakseg serve --root /data/slides --token-file ~/.wsi-weakseg-token
 *   2. Set SERVER and ROOT below (ROOT = the --root that holds the open image), open the image in QuPath,
 *      select an annotation, and run this script (Automate > Script editor > Run).
 *
 * The exchange (tested from Python in tests/serve/test_qupath_exchange.py):
 *   POST {SERVER}/v1/segment   {"slide": <path relative to ROOT>, "roi": <the annotation's GeoJSON geometry>, "model": MODEL}
 *                              -> 202 {"job": id}
 *   GET  {SERVER}/v1/jobs/{id}          every POLL_MS until state is done, failed or cancelled
 *   GET  {SERVER}/v1/jobs/{id}/result   -> QuPath GeoJSON FeatureCollection of detections (level-0 pixels)
 * Every request carries "Authorization: Bearer <token>"; errors are JSON {"error", "message"}.
 */
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Paths
import java.time.Duration
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

def SERVER = "http://127.0.0.1:8765"
def ROOT = "/data/slides"                  // the server's --root holding this image
def MODEL = null                          // null: the server's default model; or e.g. "hematoxylin-baseline"
def TOKEN_FILE = Paths.get(System.getProperty("user.home"), ".wsi-weakseg-token")
def POLL_MS = 500
def TIMEOUT_S = 600

def token = System.getenv("WSI_WEAKSEG_TOKEN") ?: Files.readString(TOKEN_FILE).trim()
def imageData = getCurrentImageData()
def annotation = getSelectedObject()
if (imageData == null || annotation == null || !annotation.isAnnotation())
    throw new IllegalStateException("open an image and select one annotation first")

def imagePath = Paths.get(imageData.getServer().getURIs()[0]).toAbsolutePath().normalize()
def rootPath = Paths.get(ROOT).toAbsolutePath().normalize()
if (!imagePath.startsWith(rootPath))
    throw new IllegalStateException("the image " + imagePath + " is not under ROOT " + rootPath)
def slide = rootPath.relativize(imagePath).toString().replace('\\', '/')

def gson = GsonTools.getInstance()
def body = [slide: slide, roi: gson.toJsonTree(annotation.getROI())]   // ROI -> GeoJSON geometry, level-0 px
if (MODEL != null) body.model = MODEL
def http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()

def send = { String method, String path, String json ->
    def builder = HttpRequest.newBuilder(URI.create(SERVER + path))
            .header("Authorization", "Bearer " + token)
            .header("Accept", "application/json")
            .timeout(Duration.ofSeconds(60))
    if (json != null)
        builder = builder.header("Content-Type", "application/json").method(method, HttpRequest.BodyPublishers.ofString(json))
    else
        builder = builder.method(method, HttpRequest.BodyPublishers.noBody())
    def response = http.send(builder.build(), HttpResponse.BodyHandlers.ofString())
    if (response.statusCode() >= 400) {
        def err = gson.fromJson(response.body(), Map)
        throw new IOException("wsi-weakseg: " + response.statusCode() + " " + err?.error + ": " + err?.message)
    }
    return response.body()
}

def job = gson.fromJson(send("POST", "/v1/segment", gson.toJson(body)), Map).job
print "wsi-weakseg job " + job + " for " + slide
def status = null
def deadline = System.currentTimeMillis() + TIMEOUT_S * 1000L
while (System.currentTimeMillis() < deadline) {
    status = gson.fromJson(send("GET", "/v1/jobs/" + job, null), Map)
    if (status.state in ["done", "failed", "cancelled"]) break
    Thread.sleep(POLL_MS)
}
if (status?.state != "done")
    throw new IOException("wsi-weakseg job " + job + " " + status?.state + ": " + status?.error?.message)

def tmp = Files.createTempFile("wsi-weakseg-", ".geojson")
Files.writeString(tmp, send("GET", "/v1/jobs/" + job + "/result", null))
def detections = PathIO.readObjects(tmp)
Files.deleteIfExists(tmp)
annotation.addChildObjects(detections)
fireHierarchyUpdate()
print "imported " + detections.size() + " nuclei in " + status.timings.total_s + " s"
