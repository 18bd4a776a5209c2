"""GLoRIA's functions, transcribed line by line (Huang et al., ICCV 2021; the GLoRIA repository's
`gloria/loss/gloria_loss.py`, `gloria/models/gloria_model.py` and `gloria/gloria.py`): the one
oracle every test that compares cmgl with GLoRIA imports. Run it in float64.

Layouts are GLoRIA's but for the word tensor, which is cmgl's [T, W, D] (GLoRIA's `words_emb` is
[T, D, W], transposed here once): slot 0 holds [CLS], then the words, then [SEP], then zero
padding, as GLoRIA's `BertEncoder.aggregate_tokens` lays them out. Regions are [I, R, D]
(GLoRIA's [I, D, ih, iw], flattened the same way).

Slots: the training loss takes `words_emb[i, :, :cap_len]` (its `_calc_local_loss` sets cap_len =
the words + 1, so [CLS] + the words); the zero-shot score takes `text_emb_l[i, :, 1:cap_len + 1]`
(the words + [SEP] for the same cap_len).
"""
import torch
import torch.nn as nn


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """gloria_loss.cosine_similarity."""
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return (w12 / (w1 * w2).clamp(min=eps)).squeeze()


def attention_fn(query, context, temp1):
    """gloria_loss.attention_fn; query [I, D, W], context [I, D, R]."""
    batch_size, query_len, source_len = query.size(0), query.size(2), context.size(2)
    context_t = torch.transpose(context, 1, 2).contiguous()
    attn = torch.bmm(context_t, query).view(batch_size * source_len, query_len)
    attn = nn.Softmax(dim=-1)(attn).view(batch_size, source_len, query_len)
    attn = torch.transpose(attn, 1, 2).contiguous().view(batch_size * query_len, source_len)
    attn = nn.Softmax(dim=-1)(attn * temp1).view(batch_size, query_len, source_len)
    return torch.bmm(context, torch.transpose(attn, 1, 2).contiguous())


def _row_cosines(word, img_features, gamma1):
    """[I, W]: each word's cosine with its attention-weighted region context, for every image."""
    n_images, words_num = word.shape[0], word.shape[2]
    wei_context = attention_fn(word, img_features, gamma1)
    word = word.transpose(1, 2).contiguous().view(n_images * words_num, -1)
    wei_context = wei_context.transpose(1, 2).contiguous().view(n_images * words_num, -1)
    return cosine_similarity(word, wei_context).view(n_images, words_num)


def _slot_cosines(words, cap_lens, regions, gamma1, first_slot):
    """Per text, [I, cap_len] row_sim of the slots first_slot..first_slot + cap_len, as GLoRIA's loops."""
    n_images = regions.shape[0]
    words_emb, img_features = words.transpose(1, 2), regions.transpose(1, 2)
    for i in range(words_emb.shape[0]):
        words_num = cap_lens[i]
        word = words_emb[i, :, first_slot:first_slot + words_num].unsqueeze(0).contiguous().repeat(n_images, 1, 1)
        yield _row_cosines(word, img_features, gamma1)


def local_similarities(words, cap_lens, regions, gamma1=4.0, gamma2=5.0):
    """The similarities of gloria_loss.local_loss, as S [T, I]: slots :cap_len, log-sum-exp over them."""
    columns = [row_sim.mul(gamma2).exp().sum(dim=1, keepdim=True).log()
               for row_sim in _slot_cosines(words, cap_lens, regions, gamma1, first_slot=0)]
    return torch.cat(columns, 1).t()


def masked_local_similarities(words, word_mask, regions, gamma1=4.0, gamma2=5.0):
    """`local_similarities` for cmgl's layout: words [T, W, D] whose real slots are `word_mask`
    (not necessarily a prefix); the real words are gathered to the front first."""
    counts = word_mask.sum(1)
    packed = torch.zeros_like(words)
    for t in range(words.shape[0]):
        packed[t, :counts[t]] = words[t][word_mask[t]]
    return local_similarities(packed, counts.tolist(), regions, gamma1, gamma2)


def local_similarities_with_grads(words, word_mask, regions, grad, gamma1=4.0, gamma2=5.0):
    """S [T, I] and dL/dwords, dL/dregions for dL/dS = grad, all in float64 on the CPU: the oracle
    every backend's output and gradients are held to."""
    words = words.detach().double().cpu().requires_grad_(True)
    regions = regions.detach().double().cpu().requires_grad_(True)
    S = masked_local_similarities(words, word_mask.cpu(), regions, gamma1, gamma2)
    S.backward(grad.double().cpu())
    return S.detach(), words.grad, regions.grad


def get_local_similarities(words, cap_lens, regions, gamma1=4.0, gamma2=5.0):
    """gloria_model.get_local_similarities, as S [T, I]: slots 1..cap_len, log of the max over them."""
    columns = [torch.log(torch.max(row_sim.mul(gamma2).exp(), dim=1, keepdim=True).values)
               for row_sim in _slot_cosines(words, cap_lens, regions, gamma1, first_slot=1)]
    return torch.cat(columns, 1).t()


def get_global_similarities(img_emb_g, text_emb_g):
    """gloria_model.get_global_similarities (sklearn's cosine_similarity), as [I, T]."""
    img = img_emb_g / torch.norm(img_emb_g, 2, dim=1, keepdim=True)
    text = text_emb_g / torch.norm(text_emb_g, 2, dim=1, keepdim=True)
    return img @ text.T


def zero_shot_classification(img_emb_g, regions, class_texts, gamma1=4.0, gamma2=5.0):
    """gloria.zero_shot_classification: [I, C]; class_texts = [(text_emb_g [T, D], words, cap_lens)].

    Per class (local + global) / 2 over its prompts, the max over the prompts, then
    `utils.normalize` per class over the images."""
    class_similarities = []
    for text_emb_g, words, cap_lens in class_texts:
        global_similarities = get_global_similarities(img_emb_g, text_emb_g)
        local_similarities = get_local_similarities(words, cap_lens, regions, gamma1, gamma2).T
        similarities = (local_similarities + global_similarities) / 2
        class_similarities.append(similarities.max(dim=1).values)
    class_similarities = torch.stack(class_similarities, 1)
    mean, std = class_similarities.mean(0), class_similarities.std(0, unbiased=False)
    return (class_similarities - mean) / std


def global_loss(cnn_code, rnn_code, eps=1e-8, temp3=10.0):
    """gloria_loss.global_loss, returning loss0 + loss1 as its model sums them."""
    labels = torch.arange(cnn_code.shape[0])
    cnn_code, rnn_code = cnn_code.unsqueeze(0), rnn_code.unsqueeze(0)
    cnn_code_norm = torch.norm(cnn_code, 2, dim=2, keepdim=True)
    rnn_code_norm = torch.norm(rnn_code, 2, dim=2, keepdim=True)
    scores0 = torch.bmm(cnn_code, rnn_code.transpose(1, 2))
    norm0 = torch.bmm(cnn_code_norm, rnn_code_norm.transpose(1, 2))
    scores0 = (scores0 / norm0.clamp(min=eps) * temp3).squeeze()
    return nn.CrossEntropyLoss()(scores0, labels) + nn.CrossEntropyLoss()(scores0.transpose(0, 1), labels)


def local_loss_tail(similarity_text_by_image, temp3=10.0):
    """The end of gloria_loss.local_loss: its `similarities` are [images, captions]."""
    similarities = similarity_text_by_image.T * temp3
    labels = torch.arange(similarities.shape[0])
    return nn.CrossEntropyLoss()(similarities, labels) + nn.CrossEntropyLoss()(similarities.transpose(0, 1), labels)


def ragged_batch(n_texts, n_images, n_words, n_regions, dim, seed, scale=1.0):
    """float64 words [T, W, D] (the first `lengths[t]` slots of text t real), their mask,
    regions [I, R, D], lengths; one text with every slot and one with a single slot."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (n_texts,), generator=g)
    lengths[0] = n_words
    lengths[-1] = 1
    word_mask = torch.arange(n_words)[None, :] < lengths[:, None]
    words = scale * torch.randn(n_texts, n_words, dim, generator=g, dtype=torch.float64)
    regions = scale * torch.randn(n_images, n_regions, dim, generator=g, dtype=torch.float64)
    return words, word_mask, regions, lengths.tolist()


def aggregate_tokens(embeddings, caption_ids, idxtoword):
    """`BertEncoder.aggregate_tokens`: [B, layers, L, H] token features -> the same with each word's
    pieces summed into one slot ([CLS], the words, [SEP]), then zero padding to L."""
    batch_size, num_layers, num_words, dim = embeddings.shape
    embeddings = embeddings.permute(0, 2, 1, 3)
    agg_embs_batch = []
    for embs, caption_id in zip(embeddings, caption_ids):
        agg_embs = []
        token_bank = []
        for word_emb, word_id in zip(embs, caption_id):
            word = idxtoword[word_id.item()]
            if word == "[SEP]":
                new_emb = torch.stack(token_bank)
                new_emb = new_emb.sum(axis=0)
                agg_embs.append(new_emb)
                agg_embs.append(word_emb)
                break
            if not word.startswith("##"):
                if len(token_bank) == 0:
                    token_bank.append(word_emb)
                else:
                    new_emb = torch.stack(token_bank)
                    new_emb = new_emb.sum(axis=0)
                    agg_embs.append(new_emb)
                    token_bank = [word_emb]
            else:
                token_bank.append(word_emb)
        agg_embs = torch.stack(agg_embs)
        padding_size = num_words - len(agg_embs)
        paddings = torch.zeros(padding_size, num_layers, dim, dtype=agg_embs.dtype)
        agg_embs_batch.append(torch.cat([agg_embs, paddings]))
    return torch.stack(agg_embs_batch).permute(0, 2, 1, 3)


def sentence_embedding(hidden_states, caption_ids, idxtoword, last_n_layers=4):
    """`BertEncoder.forward`'s sentence feature before `emb_global` (aggregate_method 'sum'): the last
    n hidden states, pieces aggregated, the mean over all L positions, summed over the layers."""
    embeddings = torch.stack(hidden_states[-last_n_layers:])
    embeddings = embeddings.permute(1, 0, 2, 3)
    embeddings = aggregate_tokens(embeddings, caption_ids, idxtoword)
    sent_embeddings = embeddings.mean(axis=2)
    return sent_embeddings.sum(axis=1)


# ---- the data pipeline and optimizer (gloria/datasets/pretraining_dataset.py, gloria/builder.py,
# gloria/models/vision_model.py); nltk's RegexpTokenizer(r"\w+").tokenize is re.findall, and
# cv2.resize(..., INTER_AREA) is `inter_area` below, a float64 transcription of its definition.

def create_path_2_sent_mapping_one(captions, max_word_num):
    """`MultimodalPretrainingDataset.create_path_2_sent_mapping`'s loop body for one report: study_sent."""
    import re

    captions = captions.replace("\n", " ")
    splitter = re.compile("[0-9]+\\.")
    captions = splitter.split(captions)
    captions = [point.split(".") for point in captions]
    captions = [sent for point in captions for sent in point]
    cnt = 0
    study_sent = []
    for cap in captions:
        if len(cap) == 0:
            continue
        cap = cap.replace("\ufffd\ufffd", " ")
        tokens = re.findall(r"\w+", cap.lower())
        if len(tokens) <= 1:
            continue
        included_tokens = []
        for t in tokens:
            t = t.encode("ascii", "ignore").decode("ascii")
            if len(t) > 0:
                included_tokens.append(t)
        study_sent.append(" ".join(included_tokens))
        cnt += len(included_tokens)
        if cnt == max_word_num:
            break
    return study_sent


def inter_area(img, dsize):
    """cv2.resize(img, dsize=(width, height), interpolation=cv2.INTER_AREA) for a shrink, by its
    definition, pixel by pixel in float64: each output pixel is the mean of the source rectangle
    [x * sx, (x + 1) * sx) x [y * sy, (y + 1) * sy), source pixels weighted by the area they share
    with it; rounded to the nearest level."""
    import math

    import numpy as np

    height, width = img.shape
    out_w, out_h = dsize
    sx, sy = width / out_w, height / out_h
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        for x in range(out_w):
            total = 0.0
            for j in range(math.floor(y * sy), min(height, math.ceil((y + 1) * sy))):
                wy = min((y + 1) * sy, j + 1) - max(y * sy, j)
                for i in range(math.floor(x * sx), min(width, math.ceil((x + 1) * sx))):
                    wx = min((x + 1) * sx, i + 1) - max(x * sx, i)
                    total += wy * wx * float(img[j, i])
            out[y, x] = total / (sx * sy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_img(img, scale):
    """`MultimodalPretrainingDataset._resize_img`, cv2.resize as `inter_area`."""
    import numpy as np

    size = img.shape
    max_dim = max(size)
    max_ind = size.index(max_dim)
    if max_ind == 0:
        wpercent = scale / float(size[0])
        hsize = int((float(size[1]) * float(wpercent)))
        desireable_size = (scale, hsize)
    else:
        hpercent = scale / float(size[1])
        wsize = int((float(size[0]) * float(hpercent)))
        desireable_size = (wsize, scale)
    resized_img = inter_area(img, desireable_size[::-1])
    if max_ind == 0:
        pad_size = scale - resized_img.shape[1]
        left = int(np.floor(pad_size / 2))
        right = int(np.ceil(pad_size / 2))
        top = int(0)
        bottom = int(0)
    else:
        pad_size = scale - resized_img.shape[0]
        top = int(np.floor(pad_size / 2))
        bottom = int(np.ceil(pad_size / 2))
        left = int(0)
        right = int(0)
    return np.pad(resized_img, [(top, bottom), (left, right)], "constant", constant_values=0)


def train_transform(crop_size, top, left):
    """`builder.build_transformation(cfg, 'train')` for GLoRIA's pretraining config (random_crop
    only, norm 'half'), its RandomCrop's draw given as (top, left)."""
    import torchvision.transforms as transforms
    import torchvision.transforms.functional as TF

    return transforms.Compose([
        transforms.Lambda(lambda img: TF.crop(img, top, left, crop_size, crop_size)),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


def resnet_input(x):
    """The first line of `ImageEncoder.resnet_forward`."""
    return nn.Upsample(size=(299, 299), mode="bilinear", align_corners=True)(x)


def adam_steps(params, grads_per_step, lr, weight_decay=1e-6, betas=(0.5, 0.999), eps=1e-8):
    """`builder.build_optimizer`'s torch.optim.Adam(params, lr, weight_decay, betas=(0.5, 0.999)),
    written out in float64: the weight decay is added to the gradient (L2), then Adam's update."""
    params = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        for k, (p, g) in enumerate(zip(params, grads)):
            g = g.double() + weight_decay * p
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g
            v[k] = betas[1] * v[k] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[k] / (1 - betas[0] ** step), v[k] / (1 - betas[1] ** step)
            p -= lr * m_hat / (v_hat.sqrt() + eps)
    return params


CHEXPERT_CLASS_PROMPTS = {  # gloria/constants.py, verbatim
    "Atelectasis": {
        "severity": ["", "mild", "minimal"],
        "subtype": [
            "subsegmental atelectasis",
            "linear atelectasis",
            "trace atelectasis",
            "bibasilar atelectasis",
            "retrocardiac atelectasis",
            "bandlike atelectasis",
            "residual atelectasis",
        ],
        "location": [
            "at the mid lung zone",
            "at the upper lung zone",
            "at the right lung zone",
            "at the left lung zone",
            "at the lung bases",
            "at the right lung base",
            "at the left lung base",
            "at the bilateral lung bases",
            "at the left lower lobe",
            "at the right lower lobe",
        ],
    },
    "Cardiomegaly": {
        "severity": [""],
        "subtype": [
            "cardiac silhouette size is upper limits of normal",
            "cardiomegaly which is unchanged",
            "mildly prominent cardiac silhouette",
            "portable view of the chest demonstrates stable cardiomegaly",
            "portable view of the chest demonstrates mild cardiomegaly",
            "persistent severe cardiomegaly",
            "heart size is borderline enlarged",
            "cardiomegaly unchanged",
            "heart size is at the upper limits of normal",
            "redemonstration of cardiomegaly",
            "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
            "cardiac silhouette size is mildly enlarged",
            "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
            "heart size remains at mildly enlarged",
            "persistent cardiomegaly with prominent upper lobe vessels",
        ],
        "location": [""],
    },
    "Consolidation": {
        "severity": ["", "increased", "improved", "apperance of"],
        "subtype": [
            "bilateral consolidation",
            "reticular consolidation",
            "retrocardiac consolidation",
            "patchy consolidation",
            "airspace consolidation",
            "partial consolidation",
        ],
        "location": [
            "at the lower lung zone",
            "at the upper lung zone",
            "at the left lower lobe",
            "at the right lower lobe",
            "at the left upper lobe",
            "at the right uppper lobe",
            "at the right lung base",
            "at the left lung base",
        ],
    },
    "Edema": {
        "severity": [
            "",
            "mild",
            "improvement in",
            "presistent",
            "moderate",
            "decreased",
        ],
        "subtype": [
            "pulmonary edema",
            "trace interstitial edema",
            "pulmonary interstitial edema",
        ],
        "location": [""],
    },
    "Pleural Effusion": {
        "severity": ["", "small", "stable", "large", "decreased", "increased"],
        "location": ["left", "right", "tiny"],
        "subtype": [
            "bilateral pleural effusion",
            "subpulmonic pleural effusion",
            "bilateral pleural effusion",
        ],
    },
}


def generate_chexpert_class_prompts(n=5):
    """`gloria.generate_chexpert_class_prompts` (n=None: every prompt, unsampled)."""
    import random

    prompts = {}
    for k, v in CHEXPERT_CLASS_PROMPTS.items():
        cls_prompts = []
        keys = list(v.keys())
        for k0 in v[keys[0]]:
            for k1 in v[keys[1]]:
                for k2 in v[keys[2]]:
                    cls_prompts.append(f"{k0} {k1} {k2}")
        prompts[k] = cls_prompts if n is None else random.sample(cls_prompts, n)
    return prompts


def linear_head_probe(train_x, train_y, val_x, val_y, test_x, generator):
    """GLoRIA's linear classification (`configs/chexpert_classification/linear_head/*`,
    `lightning/classification_model.py`) on frozen features: `nn.Linear` over the classes,
    `nn.BCEWithLogitsLoss`, `build_optimizer`'s Adam (lr 1e-4, weight_decay 1e-6, betas (0.5, 0.999)),
    batch_size 64, gradient_clip_val 0.25, max_epochs 50, EarlyStopping(monitor val_loss,
    min_delta 0, patience 5), ModelCheckpoint(save_top_k 1) scoring the test set. The layer's
    initial values and each epoch's order are drawn from `generator` (nn.Linear's uniform bounds)."""
    import copy
    import math

    classifier = nn.Linear(train_x.shape[1], train_y.shape[1]).double()
    bound = 1 / math.sqrt(train_x.shape[1])
    with torch.no_grad():
        classifier.weight.uniform_(-bound, bound, generator=generator)
        classifier.bias.uniform_(-bound, bound, generator=generator)
    loss = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-4, weight_decay=1e-6, betas=(0.5, 0.999))
    best_score, wait_count, best_state = None, 0, copy.deepcopy(classifier.state_dict())
    for epoch in range(50):
        for batch in torch.randperm(len(train_x), generator=generator).split(64):
            logit = classifier(train_x[batch])
            train_loss = loss(logit, train_y[batch])
            train_loss.backward()
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), 0.25)
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():  # val_loss logged on_epoch: batch means weighted by batch size
            batches = torch.arange(len(val_x)).split(64)
            val_loss = sum(loss(classifier(val_x[b]), val_y[b]).item() * len(b) for b in batches) / len(val_x)
        if best_score is None or val_loss < best_score:
            best_score, wait_count, best_state = val_loss, 0, copy.deepcopy(classifier.state_dict())
        else:
            wait_count += 1
            if wait_count >= 5:
                break
    classifier.load_state_dict(best_state)
    with torch.no_grad():
        return torch.sigmoid(classifier(test_x)), epoch + 1


def absent_local_similarities(words, word_mask, word_denied, regions, gamma1=4.0, gamma2=5.0):
    """Not GLoRIA's: cmgl's loss.denied_words=absent built from `masked_local_similarities` alone,
    one text at a time: S = log(sum over the affirmed words of exp(gamma2 cos) + sum over the
    denied words of exp(-gamma2 cos)), each group attending over the regions by itself."""
    rows = []
    for t in range(words.shape[0]):
        denied = word_mask[t:t + 1] & word_denied[t:t + 1]
        affirmed = word_mask[t:t + 1] & ~denied
        groups = [masked_local_similarities(words[t:t + 1], mask, regions, gamma1, sign * gamma2).view(1, -1)
                  for mask, sign in ((affirmed, 1.0), (denied, -1.0)) if mask.any()]
        rows.append(torch.logsumexp(torch.cat(groups), dim=0))
    return torch.stack(rows)
